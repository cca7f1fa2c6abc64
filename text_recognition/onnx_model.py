"""An exported ``.onnx`` file as a model: ``OnnxModel`` runs it with onnxruntime wherever a ``TextRecognitionModel``
goes (``recognize``, ``scripts/test.py``'s evaluation, ``scripts/demo.py``, ``scripts/calibrate.py``), with the same
preprocessing, decoding, protocols, tables and JSON, so that what is deployed is what is scored.

The file alone is a graph from ``pixel_values`` to ``logits``; its sidecar ``<name>.onnx.json`` (written by
``export.export_onnx`` and ``quantize.quantize_onnx``) holds the model's configuration (charset, sizes, padding),
its confidence temperature and how it was quantized. Both are checked against each other when the file is opened:
a sidecar of another file (its recorded SHA-256, or the graph's input and output shapes) is an error.

What the graph cannot do, the model says instead of doing something else: the attention graph is DTRB's greedy
decoding unrolled, so attention beam search and constraints (which need the decoder step by step) are refused;
the precision is the file's (fp32, or int8 for a quantized export), so ``precision`` other than ``fp32``/``auto`` is
refused. CTC beam search and constraints decode the graph's logits as they decode PyTorch's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .decoding import Decoder, DecodingOptions, Recognition
from .registry import stage_class
from .tokenizer import StrhubTokenizer, build_tokenizer
from .transforms import ImageInput, preprocessed_batches

ONNX_SUFFIX = ".onnx"
SIDECAR_FORMAT = "text_recognition-onnx"
#: Sidecar versions this code reads: 1 (no checksum, fp32 only) and 2 (``onnx_sha256``, ``precision``,
#: ``quantization``).
SIDECAR_VERSIONS = (1, 2)


class OnnxModelError(ValueError):
    """An ``.onnx`` file or its sidecar that cannot be used as a model, or a use the graph cannot serve."""


def is_onnx_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def sidecar_path(path: str | os.PathLike) -> Path:
    """The decoding metadata written next to an export: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sidecar(path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write ``metadata`` as the sidecar of the ``.onnx`` file at ``path``; returns the sidecar's path."""
    side = sidecar_path(path)
    side.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return side


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of the ``.onnx`` file at ``path``, checked for format and version (not yet against the graph).

    Raises:
        OnnxModelError: no sidecar, not JSON, not a text_recognition sidecar, or a version this code cannot read.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise OnnxModelError(
            f"{str(path)!r} has no sidecar {side.name!r} beside it: the sidecar holds the charset, the "
            f"preprocessing and the temperature, without which the logits cannot be read. Keep the two files "
            f"together (scripts/export_onnx.py writes both), or export the model again."
        )
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OnnxModelError(f"{str(side)!r} is not valid JSON ({error}): export the model again.") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise OnnxModelError(f"{str(side)!r} is not a text_recognition export sidecar (no \"format\": "
                             f"\"{SIDECAR_FORMAT}\"): export the model with scripts/export_onnx.py.")  # fmt: skip
    version = meta.get("format_version")
    if version not in SIDECAR_VERSIONS:
        raise OnnxModelError(f"{str(side)!r} has format_version {version!r}; this text_recognition reads versions "
                             f"{', '.join(map(str, SIDECAR_VERSIONS))}: upgrade text_recognition, or export the "
                             f"model again with this one.")  # fmt: skip
    for key in ("model_config", "input_name", "output_name"):
        if key not in meta:
            raise OnnxModelError(f"{str(side)!r} has no {key!r}: it is damaged; export the model again.")
    return meta


def write_onnx_temperature(path: str | os.PathLike, temperature: float,
                           output_dir: str | os.PathLike | None = None) -> Path:  # fmt: skip
    """Set the confidence ``temperature`` in the sidecar of the export at ``path`` (atomically), or, with
    ``output_dir``, copy the file there with a sidecar holding it. Returns the path of the ``.onnx`` it applies to."""
    import shutil

    path = Path(path)
    meta = {**read_sidecar(path), "temperature": float(temperature)}
    if output_dir is not None:
        target = Path(output_dir) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != path.resolve():
            shutil.copyfile(path, target)
        path = target
    side = sidecar_path(path)
    tmp = side.with_name(f".{side.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, side)
    return path


INSTALL_HINT = "pip install 'text_recognition[onnx]'"


class OnnxUnavailableError(ImportError, ValueError):
    """``onnx`` or ``onnxruntime`` is not installed.

    Also a ``ValueError``, so that ``text_recognition.cli.run`` reports it in one line instead of a traceback.
    """


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxUnavailableError(
            f"Running or checking an ONNX export needs onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from None
    return onnxruntime


class OnnxModel:
    """An exported model (``.onnx`` + sidecar) run by onnxruntime, usable where a ``TextRecognitionModel`` is.

    Args:
        path: the ``.onnx`` file; its sidecar ``<path>.json`` must be beside it.
        num_threads: onnxruntime's intra-op threads (default: onnxruntime's, one per physical core).
        providers: onnxruntime execution providers (default: CUDA when onnxruntime has it and a GPU is visible,
            else CPU).

    Attributes:
        config: the exported model's ``ModelConfig`` (its ``temperature`` is the sidecar's).
        tokenizer: its tokenizer.
        precision: ``"fp32"``, or ``"int8"`` for a quantized export.
        quantization: how it was quantized (the sidecar's record), or ``None``.
        backend: ``"onnxruntime"``.

    Raises:
        FileNotFoundError: no file at ``path``.
        OnnxModelError: no sidecar, a sidecar of another file or model, or a file onnxruntime cannot load.
        OnnxUnavailableError: onnxruntime is not installed.
    """

    backend = "onnxruntime"
    training = False

    def __init__(self, path: str | os.PathLike, *, num_threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:  # fmt: skip
        ort = _import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No ONNX file at {str(self.path)!r}.")
        self.metadata = meta = read_sidecar(self.path)
        side = sidecar_path(self.path)
        recorded = meta.get("onnx_sha256")
        if recorded is not None and recorded != file_sha256(self.path):
            raise OnnxModelError(
                f"{str(side)!r} belongs to another file: it records the SHA-256 of the export it was written with, "
                f"and {str(self.path)!r} is not that file. Keep each .onnx with its own sidecar, or export again."
            )
        try:
            config = ModelConfig.from_dict({**meta["model_config"], "temperature": meta.get("temperature", 1.0)})
        except (TypeError, ValueError) as error:
            raise OnnxModelError(f"{str(side)!r}: its model_config is not valid ({error}); export again.") from None
        self.config = config
        self.tokenizer = build_tokenizer(config)
        self.precision = meta.get("precision", "fp32")
        self.quantization = meta.get("quantization")
        self.input_name, self.output_name = meta["input_name"], meta["output_name"]
        options = ort.SessionOptions()
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be at least 1, got {num_threads}.")
            options.intra_op_num_threads = num_threads
        if providers is None:
            available = ort.get_available_providers()
            providers = ["CPUExecutionProvider"]
            if "CUDAExecutionProvider" in available and torch.cuda.is_available():
                providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except Exception as error:  # onnxruntime's own exception types: a damaged or foreign file
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OnnxModelError(f"onnxruntime cannot load {str(self.path)!r} ({first}): the file is damaged or "
                                 f"not an ONNX model; export it again.") from None  # fmt: skip
        self._check_graph(side)
        self._num_parameters: int | None = None

    def _check_graph(self, side: Path) -> None:
        """The graph's input and output must be the sidecar's: names, channels, size and classes."""
        config = self.config
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if self.input_name not in inputs or self.output_name not in outputs:
            raise OnnxModelError(f"{str(side)!r} names input {self.input_name!r} and output {self.output_name!r}, "
                                 f"but {str(self.path)!r} has inputs {list(inputs)} and outputs {list(outputs)}: the "
                                 f"sidecar belongs to another file.")  # fmt: skip
        shape, out = inputs[self.input_name], outputs[self.output_name]
        expected = [config.input_channel, config.img_h, config.img_w]
        got = [d if isinstance(d, int) else None for d in shape[1:]]
        problems = []
        if len(shape) != 4 or any(g is not None and g != e for g, e in zip(got, expected)):
            problems.append(f"input {list(shape)} instead of [batch, {', '.join(map(str, expected))}]")
        if len(out) != 3 or (isinstance(out[2], int) and out[2] != config.num_class):
            problems.append(f"output {list(out)} instead of [batch, steps, {config.num_class}] classes")
        if problems:
            raise OnnxModelError(f"{str(side)!r} describes another model than {str(self.path)!r}: the graph has "
                                 f"{' and '.join(problems)}. Keep each .onnx with its own sidecar, or export "
                                 f"again.")  # fmt: skip
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> OnnxModel:
        return cls(path, **kwargs)

    # -- what evaluation, calibration and the scripts use of a model --

    @property
    def device(self) -> torch.device:
        """Where inputs go: the CPU (onnxruntime takes numpy arrays, whatever its provider)."""
        return torch.device("cpu")

    @property
    def description(self) -> str:
        """``"onnxruntime int8 (static, QDQ)"``: the backend and precision, for tables and cards."""
        text = f"{self.backend} {self.precision}"
        if self.quantization:
            text += f" ({self.quantization.get('method', '?')} quantization)"
        return text

    @property
    def num_parameters(self) -> int:
        """The exported model's parameters (recorded in the sidecar), or, for an older sidecar, the elements of the
        graph's initializers."""
        if self._num_parameters is None and isinstance(self.metadata.get("num_parameters"), int):
            self._num_parameters = self.metadata["num_parameters"]
        if self._num_parameters is None:
            import onnx

            graph = onnx.load(str(self.path), load_external_data=False).graph
            self._num_parameters = int(sum(np.prod(t.dims, dtype=np.int64) for t in graph.initializer))
        return self._num_parameters

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        if mode:
            raise OnnxModelError(f"{str(self.path)!r} is an exported graph: it cannot be trained. Train the PyTorch "
                                 f"model folder it was exported from.")  # fmt: skip
        return self

    def to(self, device: torch.device | str | None = None, *args: Any, **kwargs: Any) -> OnnxModel:
        """Accepted for the scripts' ``model.to(device)``: onnxruntime's provider was chosen when the file was
        opened (CUDA when available), and inputs are given on the CPU."""
        return self

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Run the graph: preprocessed images [B, C, img_h, img_w] -> logits [B, T, num_class] (float32, CPU)."""
        array = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.fixed_batch is not None and array.shape[0] != self.fixed_batch:
            parts = [self.session.run([self.output_name], {self.input_name: array[i : i + 1]})[0]
                     for i in range(array.shape[0])]  # fmt: skip
            return torch.from_numpy(np.concatenate(parts, axis=0))
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: array})[0])

    __call__ = logits

    def set_decoding(self, decode_ar: bool | None = None, refine_iters: int | None = None) -> None:
        """``--decode_ar`` / ``--refine_iters``: a decoding mode is part of an exported graph; none can be set."""
        given = [f"--{name}" for name, value in (("decode_ar", decode_ar), ("refine_iters", refine_iters))
                 if value is not None]  # fmt: skip
        if given:
            raise OnnxModelError(f"{' and '.join(given)} cannot apply to {str(self.path)!r}: an exported graph "
                                 f"decodes as it was exported. Leave them out.")  # fmt: skip

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The head's loss (CTC or cross-entropy, as the PyTorch model computes it) on the graph's logits."""
        if isinstance(self.tokenizer, StrhubTokenizer):  # strhub's ids: [P] is ignored
            from .stages.vitstr import strhub_cross_entropy

            return strhub_cross_entropy(logits, targets, self.tokenizer.pad_id)
        return stage_class("prediction", self.config.prediction).loss(logits, targets, lengths, **kwargs)

    def decoder(self, options: DecodingOptions | None = None) -> Decoder:
        """A ``Decoder`` over the graph's logits. Beam search and constraints of the decoders that feed their
        output back (attention, PARSeq) are refused: the graph is the greedy decoding unrolled, without the
        step-wise decoder they need. CTC's and ViTSTR's search the logits."""
        options = options or DecodingOptions()
        if self.config.prediction in ("Attn", "PARSeq") and not options.is_greedy:
            wanted = "beam search" if options.beam_width > 1 else "constrained decoding (allowlist, blocklist, " \
                                                                  "lexicon or pattern)"  # fmt: skip
            raise OnnxModelError(
                f"{wanted} with the {self.config.prediction} head needs its decoder step by step, and "
                f"{str(self.path)!r} holds the "
                f"greedy decoding unrolled (the logits of the argmax path only). Use greedy decoding with this file "
                f"(--min_confidence works), or the PyTorch model folder it was exported from."
            )
        return Decoder(self.tokenizer, options, self.config.batch_max_length, self.config.temperature,
                       self.config.prediction)  # fmt: skip

    def predict_batch(self, pixel_values: torch.Tensor, decoder: Decoder | None = None
                      ) -> tuple[torch.Tensor, list[Recognition] | None]:  # fmt: skip
        """The graph's logits and, when ``decoder`` searches (CTC beam search, constraints), its results."""
        logits = self.logits(pixel_values)
        if decoder is None or decoder.options.is_greedy:
            return logits, None
        return logits, decoder.decode_logits(logits)

    def recognize_batch(self, pixel_values: torch.Tensor, decoder: Decoder | None = None) -> list[Recognition]:
        return (decoder or self.decoder()).decode_logits(self.logits(pixel_values))

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
        precision: str = "auto",
        compile: bool = False,
    ) -> list[Recognition]:
        """``TextRecognitionModel.recognize`` for the exported file: the same inputs, preprocessing and decoding
        options. ``precision`` is the file's: ``"auto"`` or its own (``"fp32"``, ``"int8"``); ``compile`` does not
        apply to a graph."""
        check_onnx_speed_options(self, precision, compile)
        options = DecodingOptions(beam_width, allowlist, blocklist, tuple(lexicon) if lexicon is not None else None,
                                  pattern, min_confidence)  # fmt: skip
        decoder = self.decoder(options)
        results: list[Recognition] = []
        for pixel_values in preprocessed_batches(images, batch_size, self.config):
            results += self.recognize_batch(pixel_values, decoder)
        return results

    def __repr__(self) -> str:
        return f"OnnxModel({self.config.stage_string}, {self.description}, {str(self.path)!r})"


def check_onnx_speed_options(model: OnnxModel, precision: str | None, compile: bool) -> None:
    """``--precision`` and ``--compile`` with an exported file: only what the file is (``None``: not given).

    Raises:
        OnnxModelError: a precision other than ``auto`` or the file's own, or ``compile``.
    """
    if compile:
        raise OnnxModelError(f"--compile compiles a PyTorch model; {str(model.path)!r} is an ONNX graph, which "
                             f"onnxruntime optimises when it opens it. Leave --compile out.")  # fmt: skip
    if precision is None:
        return
    name = str(precision).lower()
    if name in ("no", "float32"):
        name = "fp32"
    if name not in ("auto", model.precision):
        raise OnnxModelError(
            f"--precision {precision} cannot apply to {str(model.path)!r}: an exported file runs at the precision it "
            f"was exported in ({model.precision}). Leave --precision out (or give auto), export an int8 file with "
            f"scripts/export_onnx.py --quantize int8, or evaluate the PyTorch model folder under --precision "
            f"{precision}."
        )
