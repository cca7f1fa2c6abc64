"""``TextRecognitionModel``: DTRB's four-stage model as an ``nn.Module`` that saves to and loads from the Hub."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import load_file
from torch import nn

from .config import ModelConfig
from .decoding import Decoder, DecodingOptions, Recognition
from .fastpath import CHANNELS_LAST_BY_DEFAULT, compile_encoder, inference_settings, set_channels_last
from .checkpoints import check_state_dict, read_dtrb_state_dict, read_strhub_model, verify_tps_buffers
from .hub import build_card, load_model_card_template
from .registry import build_stage
from .tokenizer import build_tokenizer
from .transforms import ImageInput, preprocessed_batches

SAFETENSORS_NAME = "model.safetensors"


class CharsetChange(NamedTuple):
    """What ``resize_charset`` did: the symbols that kept their learned rows, the new ones, the removed ones."""

    kept: str
    added: str
    removed: str

    def __str__(self) -> str:
        return (f"kept {len(self.kept)} symbols, added {len(self.added)} ({self.added!r}), removed "
                f"{len(self.removed)} ({self.removed!r})")  # fmt: skip


#: How far below the reference class (CTC blank, attention ``[s]``) a new symbol's logit starts: never the argmax,
#: so old predictions stay as they were, and near enough to be learned quickly.
NEW_SYMBOL_MARGIN = 10.0


def init_dtrb_weights(model: nn.Module) -> None:
    """DTRB's initialisation (its ``train.py``), applied in parameter-registration order.

    Biases are zeroed (LSTM biases too), weights get ``kaiming_normal_`` (fan_in, gain sqrt 2), and weights that
    cannot take it (BatchNorm's 1-D weights) are set to 1. TPS's ``localization_fc2`` keeps its fiducial
    initialisation. Buffers are untouched.
    """
    for name, param in model.named_parameters():
        if "localization_fc2" in name:
            continue
        with torch.no_grad():
            if "bias" in name:
                nn.init.constant_(param, 0.0)
            elif "weight" in name:
                if param.dim() < 2:
                    param.fill_(1.0)
                else:
                    nn.init.kaiming_normal_(param)


class TextRecognitionModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="text_recognition",
    pipeline_tag="image-to-text",
    license="apache-2.0",
    tags=["scene-text-recognition", "ocr", "text_recognition"],
    repo_url="https://github.com/text-recognition/text_recognition",
    paper_url="https://arxiv.org/abs/1904.01906",
    model_card_template=load_model_card_template(),
):
    """Transformation -> FeatureExtraction -> column pooling -> SequenceModeling -> Prediction.

    Args:
        config: the architecture; a ``ModelConfig`` or a dict of its fields.

    Example:
        >>> model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", "CTC"))
        >>> logits = model(torch.zeros(2, 1, 32, 100))            # [2, 24, 37]
        >>> model.recognize(["word.png"])                          # [Recognition(text=..., confidence=...)]
    """

    def __init__(self, config: ModelConfig | dict[str, Any]) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        self.config = config
        self.tokenizer = build_tokenizer(config)
        # The attribute names are DTRB's (not PEP 8) so that its state dicts load after stripping "module.".
        self.Transformation = build_stage("transformation", config.transformation, config, config.input_channel)
        self.FeatureExtraction = build_stage(
            "feature_extraction", config.feature_extraction, config, self.Transformation.out_features
        )
        self.AdaptiveAvgPool = nn.AdaptiveAvgPool2d((None, 1))  # mean over the feature-map height
        self.SequenceModeling = build_stage(
            "sequence_modeling", config.sequence_modeling, config, self.FeatureExtraction.out_features
        )
        self.Prediction = build_stage("prediction", config.prediction, config, self.SequenceModeling.out_features)
        # The convolutions run in channels_last where measured faster (fastpath); the weights' values are the same.
        # Not with TPS by default: its grid amplifies the layout's rounding past DTRB-equality's 1e-4 (opt in with
        # fastpath.set_channels_last(model)).
        set_channels_last(self, config.feature_extraction in CHANNELS_LAST_BY_DEFAULT
                          and config.transformation == "None")  # fmt: skip

    def init_weights(self) -> None:
        """Re-initialise, as training does before it starts: DTRB's rules (``init_dtrb_weights``) for DTRB's
        stages, strhub's (timm's) for the stages that define their own ``init_weights`` (ViT, PARSeq, ViTSTR)."""
        stages = (self.Transformation, self.FeatureExtraction, self.SequenceModeling, self.Prediction)
        if not any(hasattr(stage, "init_weights") for stage in stages):
            init_dtrb_weights(self)  # the whole model at once: DTRB's order of random draws
            return
        for stage in stages:
            if hasattr(stage, "init_weights"):
                stage.init_weights()
            else:
                init_dtrb_weights(stage)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> contextual features [B, T, F] (the first three stages).

        A CNN's map is averaged over its height into columns; a ViT's tokens (all patches, row-major) go on as
        they are."""
        visual = self.FeatureExtraction(self.Transformation(pixel_values))
        if not getattr(self.FeatureExtraction, "outputs_sequence", False):
            visual = self.AdaptiveAvgPool(visual.permute(0, 3, 1, 2)).squeeze(3)  # [B, W', C, H'] -> [B, T, C]
        return self.SequenceModeling(visual)

    def forward(self, pixel_values: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """Images [B, C, img_h, img_w] in [-1, 1] -> logits [B, T, num_class].

        Args:
            pixel_values: a batch as ``transforms.preprocess`` or ``AlignCollate`` makes it.
            text: the tokenizer's encoded labels [B, batch_max_length + 2] for training. Attention: teacher forcing
                (the decoder input ``[:, :-1]`` works too). PARSeq: permutation language modelling; the logits of
                every permutation, [K, B, T + 1, num_class], for ``loss``. ``None`` decodes greedily (PARSeq: as
                ``config.decode_ar`` / ``refine_iters`` say, giving strhub's logits). CTC and ViTSTR ignore it.
        """
        return self.Prediction(self.encode(pixel_values), text)

    @property
    def teacher_forced(self) -> bool:
        """Whether training passes the encoded labels to ``forward`` (attention, PARSeq)."""
        return bool(self.Prediction.teacher_forced)

    def set_decoding(self, decode_ar: bool | None = None, refine_iters: int | None = None) -> None:
        """Change PARSeq's decoding mode in place (``config`` follows, so ``save_pretrained`` records it).

        Raises:
            ValueError: the head has no such mode (CTC, attention, ViTSTR), or a bad value.
        """
        changes = {name: value for name, value in (("decode_ar", decode_ar), ("refine_iters", refine_iters))
                   if value is not None}  # fmt: skip
        if not changes:
            return
        new_config = dataclasses.replace(self.config, **changes)  # validated: names the flag when it cannot apply
        self.Prediction.decode_ar, self.Prediction.refine_iters = new_config.decode_ar, new_config.refine_iters
        self.config = self._hub_mixin_config = new_config

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The head's loss against the tokenizer's ``encode`` output (CTC: ``baidu=True`` for ``--baiduCTC``)."""
        return self.Prediction.loss(logits, targets, lengths, **kwargs)

    def compile_encoder(self, **kwargs: Any) -> TextRecognitionModel:
        """``torch.compile`` the image encoder (the CNN and BiLSTM stages) for faster ``recognize`` on repeated
        batches; the attention decoder's step loop stays eager. Returns the model. ``kwargs`` go to
        ``torch.compile``. (``nn.Module.compile``, which compiles ``forward`` in place, is left as torch defines it.)
        """
        return compile_encoder(self, **kwargs)

    @torch.no_grad()
    def resize_charset(self, character: str) -> CharsetChange:
        """Change the charset in place, keeping what was learned.

        Every symbol in both charsets keeps its learned rows: the CTC head's rows, or, for attention, the generator's
        rows and the attention cell's one-hot input columns. A new symbol's head row is the reference class's row
        (the CTC blank, the attention ``[s]``) with its bias lowered by ``NEW_SYMBOL_MARGIN``: its logit is always
        below the reference's, so it is never the argmax and greedy predictions of inputs without it do not change
        (confidences change by at most ``len(added) * exp(-10)`` relative). Its attention input column is the mean of
        the old symbols' columns. Removed symbols' rows are dropped. ``config`` and ``tokenizer`` follow.

        Args:
            character: the new charset (or a preset name, ``"94_full"``).

        Returns:
            ``CharsetChange(kept, added, removed)``.

        Raises:
            ValueError: an invalid charset (empty, duplicates).
        """
        new_config = dataclasses.replace(self.config, character=character)
        new_tokenizer = build_tokenizer(new_config)
        old_ids = {token: i for i, token in enumerate(self.tokenizer.tokens)}
        sources = [old_ids.get(token) for token in new_tokenizer.tokens]  # None: a new symbol
        self.Prediction.resize_classes(sources, NEW_SYMBOL_MARGIN)  # each head resizes its own rows
        change = CharsetChange(
            kept="".join(c for c in new_config.character if c in self.config.character),
            added="".join(c for c in new_config.character if c not in self.config.character),
            removed="".join(c for c in self.config.character if c not in new_config.character),
        )
        self.config = self._hub_mixin_config = new_config  # config.json is written from the mixin's copy
        self.tokenizer = new_tokenizer
        return change

    @torch.inference_mode()
    def recognize(
        self,
        images: ImageInput | Sequence[ImageInput],
        batch_size: int = 64,
        *,
        beam_width: int = 1,
        allowlist: str | None = None,
        blocklist: str | None = None,
        lexicon: Iterable[str] | None = None,
        pattern: str | None = None,
        min_confidence: float | None = None,
        precision: str = "fp32",
        compile: bool = False,
    ) -> list[Recognition]:
        """Read the text of word images.

        Args:
            images: one image or a sequence of PIL images, file paths, uint8 arrays [H, W] / [H, W, C] or tensors,
                of any sizes (each is resized as the model was trained: stretched, or kept-ratio and padded).
            batch_size: images per forward pass (all images of a batch share one resize, so any sizes batch
                together).
            precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the forward pass under that autocast (the
                TPS grid and the decoding stay fp32). bf16 reads english_g2's real words within 0.3 points of fp32
                (``BENCHMARKS.md``). ``"auto"``: the fastest that keeps that accuracy here
                (``fastpath.resolve_precision``: bf16 on a GPU with bf16 or a CPU with AVX512-BF16 or AMX, for CTC
                models; else fp32). bf16 or fp16 on a CPU without native kernels for it warns once
                (``SlowPrecisionWarning``).
            compile: ``torch.compile`` the encoder first (once; see ``compile_encoder``). The first batches pay the
                compilation; it pays on repeated calls.
            beam_width: hypotheses kept per image (CTC prefix beam search, attention beam search); 1 is greedy.
            allowlist: the only symbols the text may contain, e.g. ``"0123456789"``.
            blocklist: symbols the text may not contain.
            lexicon: words the text must be one of.
            pattern: a regular expression the whole text must match, e.g. ``r"[A-Z]{2}\\d{4}"``.
            min_confidence: below it the result abstains (``abstained=True``; the text is kept). A result that no
                reading within the constraints fits also abstains, with an empty text.

        Returns:
            One ``Recognition(text, confidence, abstained)`` per image, in order. The confidence uses the model's
            calibrated ``config.temperature`` (1.0 until ``scripts/calibrate.py`` or training fits one).

        Raises:
            ValueError: impossible constraints (an allowlist symbol outside the charset, an empty lexicon, a pattern
                no charset string matches), or a bad ``batch_size`` / ``beam_width``.
        """
        options = DecodingOptions(beam_width, allowlist, blocklist, tuple(lexicon) if lexicon is not None else None,
                                  pattern, min_confidence)  # fmt: skip
        decoder = self.decoder(options)
        batches = preprocessed_batches(images, batch_size, self.config)
        was_training = self.training
        self.eval()
        device = self.device
        results: list[Recognition] = []
        try:
            with inference_settings(self, precision, compile):
                for pixel_values in batches:
                    results += self.recognize_batch(pixel_values.to(device), decoder)
        finally:
            self.train(was_training)
        return results

    def decoder(self, options: DecodingOptions | None = None) -> Decoder:
        """A ``Decoder`` for ``options`` (default: greedy) with this model's tokenizer, length and temperature;
        build it once and pass it to ``recognize_batch`` for many batches (a large lexicon is compiled once)."""
        return Decoder(self.tokenizer, options or DecodingOptions(), self.config.batch_max_length,
                       self.config.temperature, self.config.prediction)  # fmt: skip

    def predict_batch(self, pixel_values: torch.Tensor, decoder: Decoder | None = None
                      ) -> tuple[torch.Tensor, list[Recognition] | None]:  # fmt: skip
        """What evaluation scores for a preprocessed batch: the greedy logits [B, T, num_class] (DTRB's forward,
        for the loss and calibration) and, when ``decoder`` searches (beam search, constraints), its results from
        the same encoder features; ``None`` when greedy (decode the logits)."""
        features = self.encode(pixel_values)
        logits = self.Prediction(features)  # greedy for attention: what is evaluated is what inference gives
        if decoder is None or decoder.options.is_greedy:
            return logits, None
        return logits, decoder.decode(self.Prediction, features)

    @property
    def device(self) -> torch.device:
        """The device of the model's weights."""
        return next(self.parameters()).device

    @torch.inference_mode()
    def recognize_batch(self, pixel_values: torch.Tensor, decoder: Decoder | None = None) -> list[Recognition]:
        """Decode a preprocessed batch [B, C, img_h, img_w]: greedy by default (attention stops once every row
        ended), or as ``decoder`` (``model.decoder(DecodingOptions(...))``) says."""
        return (decoder or self.decoder()).decode(self.Prediction, self.encode(pixel_values))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- Hub integration -------------------------------------------------------------------------------------

    def generate_model_card(self, *args: Any, **kwargs: Any):
        """Render ``model_card_template.md`` for this model; see ``hub.build_card`` for the accepted kwargs."""
        return build_card(
            self._hub_mixin_info.model_card_data,
            self._hub_mixin_info.model_card_template,
            self.config,
            self.num_parameters,
            repo_url=self._hub_mixin_info.repo_url,
            **kwargs,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> TextRecognitionModel:
        """Load ``model.safetensors`` strictly: a missing, extra or mis-shaped weight is an error. ``decode_ar`` /
        ``refine_iters`` given to ``from_pretrained`` set PARSeq's decoding mode (``set_decoding``)."""
        decoding = {name: model_kwargs.pop(name) for name in ("decode_ar", "refine_iters") if name in model_kwargs}
        model = cls(**model_kwargs)
        model.set_decoding(**decoding)
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, SAFETENSORS_NAME)
            if not os.path.isfile(weights):
                raise FileNotFoundError(
                    f"{weights!r} not found: a model folder holds config.json and {SAFETENSORS_NAME} "
                    f"(written by save_pretrained). For a DTRB .pth use TextRecognitionModel.from_dtrb_checkpoint."
                )
        else:
            try:
                weights = hf_hub_download(
                    repo_id=model_id,
                    filename=SAFETENSORS_NAME,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                )
            except EntryNotFoundError:
                raise FileNotFoundError(f"The Hub repo {model_id!r} has no {SAFETENSORS_NAME}.") from None
        try:
            state_dict = load_file(weights, device="cpu")
        except Exception as error:  # safetensors' SafetensorError: a truncated or corrupt file
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{weights!r} cannot be read as safetensors weights ({reason}): the file is truncated or "
                             f"corrupt; save or download the model again.") from None  # fmt: skip
        if strict:
            config_file = repr(os.path.join(model_id, "config.json")) if os.path.isdir(model_id) else "its config.json"
            state_dict = check_state_dict(model, state_dict, model.config, repr(model_id), config_file)
        model.load_state_dict(state_dict, strict=strict)
        model.to(map_location)
        model.eval()
        return model

    @classmethod
    def from_dtrb_checkpoint(
        cls, path: str | os.PathLike, config: ModelConfig | dict[str, Any], map_location: str = "cpu"
    ) -> TextRecognitionModel:
        """Load a DTRB ``.pth`` (with or without the ``module.`` prefix) into a model built from ``config``.

        DTRB checkpoints do not record their options: ``config`` must give the ones the model was trained with
        (stages, ``character``/``sensitive``, ``rgb``, sizes). Every key and shape is checked.

        Raises:
            CheckpointMismatchError: when the checkpoint does not fit ``config``, with the flags it points to.
        """
        model = cls(config)
        source = repr(os.fspath(path))
        state_dict = check_state_dict(model, read_dtrb_state_dict(path), model.config, source)
        verify_tps_buffers(model, state_dict, source)
        model.load_state_dict(state_dict, strict=True)
        model.to(map_location)
        model.eval()
        return model

    @classmethod
    def from_strhub_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        architecture: str | None = None,
        decode_ar: bool | None = None,
        refine_iters: int | None = None,
        map_location: str = "cpu",
        **overrides: Any,
    ) -> TextRecognitionModel:
        """Load a strhub (baudm/parseq) checkpoint: a released ``.pt`` or a Lightning ``.ckpt`` of ``parseq``,
        ``parseq-tiny`` or ``vitstr``, with or without Lightning's ``model.`` prefix.

        Architecture and sizes come from the keys and shapes (the charset from the head's size: 94 symbols are
        strhub's ``94_full``; 36, 62 its smaller sets). ``model(pixel_values)`` gives strhub's logits in the decoding
        mode for images as strhub's test transform makes them (RGB, 32x128 bicubic, [-1, 1]: ``preprocess``).

        Args:
            path: the checkpoint, read with ``torch.load(weights_only=True)``.
            architecture: ``"parseq"``, ``"parseq-tiny"`` or ``"vitstr"``: checked against what the file holds.
            decode_ar, refine_iters: PARSeq's decoding mode (default strhub's: autoregressive, 1 refinement).
            overrides: ``ModelConfig`` fields the file does not record (``character``, ``img_h``/``img_w``,
                ``batch_max_length`` for ViTSTR, ``encoder_heads``/``decoder_heads`` when not strhub's 64/32 dims
                per head), checked against the shapes.

        Raises:
            CheckpointMismatchError: a key or shape that does not fit, naming the flag to fix.
        """
        config, state_dict = read_strhub_model(path, architecture=architecture, decode_ar=decode_ar,
                                               refine_iters=refine_iters, **overrides)  # fmt: skip
        model = cls(config)
        mapped = check_state_dict(model, state_dict, model.config, repr(os.fspath(path)))
        model.load_state_dict(mapped, strict=True)
        model.to(map_location)
        model.eval()
        return model

    def __repr__(self) -> str:
        return f"TextRecognitionModel({self.config.stage_string}, {self.num_parameters:,} parameters)"


def expected_sequence_length(config: ModelConfig) -> int:
    """T of the logits for ``config``: CNN columns (ViT tokens) for CTC, ``batch_max_length + 1`` steps for the
    other heads (PARSeq: its most, and always with refinement)."""
    if config.prediction != "CTC":
        return config.batch_max_length + 1
    if config.feature_extraction == "ViT":
        return (config.img_h // config.patch_h) * (config.img_w // config.patch_w)
    columns = config.img_w // 4  # two 2x2 max-pools along the width
    return columns - 1 if config.feature_extraction == "VGG" else columns + 1
