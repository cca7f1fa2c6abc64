#!/usr/bin/env bash
# The GPU benchmark in one script (at most ~8 minutes on one GPU); installs nothing beyond `make install`.
#   bash benchmarks/gpu.sh            # on a GPU machine: fastpath sections + peak memory, one table at the end
#   bash benchmarks/gpu.sh --cpu      # the CPU fallback, small sizes (a check that every part runs)
# Sections (benchmarks/fastpath.py, in one process, same device and weights on both sides):
#   training steps of TRBA and CRNN in fp32, bf16 and fp16 + GradScaler, eager and with the encoder compiled,
#   against DTRB's train.py step; evaluation batches; recognize at batch 1 and 256; peak GPU memory per side.
#   Then benchmarks/memory.py: peak RSS (and GPU memory) of a whole `accelerate launch scripts/train.py` run
#   against the DTRB-style loop.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-gpu}
[ -n "${GPU_BENCH_SKIP_INSTALL:-}" ] || make install >/dev/null  # GPU_BENCH_SKIP_INSTALL=1: .venv is already set up
PY=.venv/bin/python
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
LOG=$(mktemp -d)/gpu_bench
if [ "$MODE" = "--cpu" ]; then
  timeout 420 $PY benchmarks/fastpath.py --device cpu --quick --sections train eval recognize | tee "$LOG.fastpath"
  timeout 300 $PY benchmarks/memory.py --iterations 2 --workers 0 | tee "$LOG.memory"
else
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --cpu')"
  timeout 360 $PY benchmarks/fastpath.py --device cuda --compile --sections train eval recognize --repeats 3 \
    --train_batch 192 --steps 10 --eval_batch 256 --eval_batches 5 --recognize_images 1024 \
    --recognize_images_batch1 64 | tee "$LOG.fastpath"
  # RSS like with like: both sides train on the CPU here (the DTRB-style loop has no device placement); the
  # GPU memory of both sides on the GPU is the fastpath table's last column.
  timeout 90 $PY benchmarks/memory.py --iterations 10 | tee "$LOG.memory"
fi
echo
echo "== one table =="
sed -n '/^one table/,/^(layout rows/p' "$LOG.fastpath" | sed '1d;$d'
grep '^| None\|^| TPS' "$LOG.memory" | awk -F'|' '{printf "| peak RSS MiB (tree / largest process) |%s|%s| 32 | %s / %s | | | |%s|\n", $2, $3, $4, $5, $6}' || true
