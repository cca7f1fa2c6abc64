# Two commands on a fresh machine (python3 with venv + pip is all they assume):
#   make test   installs the package with its test extra into .venv and runs the test suite
#   make demo   (see README) synthesize -> LMDB -> datasets -> train -> evaluate -> predict
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch==2.13.0 first when no torch is importable: an unpinned torch would pull gigabytes of CUDA wheels.
# A user who already has a (CUDA) torch in .venv keeps it.
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test,synth,tensorboard]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow"

# `make demo`: synthesize -> LMDB -> datasets -> train -> evaluate -> predict, on CPU, in about 6 minutes.
# The sizes are variables so the test suite can run the same recipe small (make demo DEMO_TRAIN=300 ...).
DEMO ?= demo_output
DEMO_TRAIN ?= 30000
DEMO_EVAL ?= 500
DEMO_ITERS ?= 6000
DEMO_VAL_INTERVAL ?= 1000
DEMO_MIN_ACCURACY ?= 30
DEMO_MODEL := --Transformation None --FeatureExtraction VGG --SequenceModeling BiLSTM --Prediction CTC \
	--output_channel 64 --hidden_size 64 --PAD
DEMO_RUN := $(DEMO)/runs/crnn-synth
DEMO_SYNTH := $(PY) scripts/synthesize.py --engine realistic --format folder

demo: $(STAMP)
	rm -rf $(DEMO)
	@echo "== [1/6] render word images with the realistic engine as files + gt.txt: training (seed 0), validation (seed 1), test (seed 2)"
	$(DEMO_SYNTH) --output $(DEMO)/raw/train --num_samples $(DEMO_TRAIN) --seed 0
	$(DEMO_SYNTH) --output $(DEMO)/raw/valid --num_samples $(DEMO_EVAL) --seed 1
	$(DEMO_SYNTH) --output $(DEMO)/raw/test --num_samples $(DEMO_EVAL) --seed 2
	@echo "== [2/6] images + gt.txt -> DTRB LMDBs (scripts/create_lmdb_dataset.py)"
	for split in train valid test; do \
	  $(PY) scripts/create_lmdb_dataset.py --inputPath $(DEMO)/raw/$$split --gtFile $(DEMO)/raw/$$split/gt.txt \
	    --outputPath $(DEMO)/lmdb/$$split/synth || exit 1; done
	@echo "== [3/6] LMDBs -> Hugging Face datasets (scripts/convert_lmdb.py)"
	$(PY) scripts/convert_lmdb.py --lmdb $(DEMO)/lmdb --output_dir $(DEMO)/hf --no_progress
	@echo "== [4/6] train a small None-VGG-BiLSTM-CTC with accelerate on the CPU"
	$(VENV)/bin/accelerate launch --config_file accelerate_configs/cpu.yaml scripts/train.py \
	  --train_data $(DEMO)/hf/train --valid_data $(DEMO)/hf/valid --select_data synth --batch_ratio 1 \
	  $(DEMO_MODEL) --batch_size 32 --adam --lr 1e-3 --scheduler onecycle --num_iter $(DEMO_ITERS) \
	  --valInterval $(DEMO_VAL_INTERVAL) \
	  --workers 1 --output_dir $(DEMO)/runs --exp_name crnn-synth --report_to none
	@echo "== [5/6] evaluate the best model on the held-out test words"
	$(PY) scripts/test.py --eval_data $(DEMO)/hf/test --saved_model $(DEMO_RUN)/best_accuracy --workers 0 --result_dir $(DEMO)/result \
	  --output_json $(DEMO)/test_results.json
	@echo "== [6/6] read ten test images (scripts/demo.py)"
	mkdir -p $(DEMO)/predict_images && cp $$(ls $(DEMO)/raw/test/images/* | head -n 10) $(DEMO)/predict_images/
	cd $(DEMO) && $(abspath $(PY)) $(CURDIR)/scripts/demo.py --image_folder predict_images \
	  --saved_model runs/crnn-synth/best_accuracy --workers 0
	@$(PY) -c "import json, sys; r = json.load(open('$(DEMO)/test_results.json')); a = r['total_accuracy']; \
	  print(f'held-out word accuracy: {a:.1f}% (demo target > $(DEMO_MIN_ACCURACY)%)'); \
	  print('model folder with its card: $(DEMO_RUN)/best_accuracy'); sys.exit(a <= $(DEMO_MIN_ACCURACY))"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache $(DEMO)
