"""text_recognition: DTRB's four-stage scene-text-recognition models, trained and shared the Hugging Face way."""

from .config import CHARSET_36, CHARSET_94, ModelConfig
from .loading import load_model
from .model import Recognition, TextRecognitionModel, init_dtrb_weights
from .onnx_model import OnnxModel
from .registry import list_stages
from .tokenizer import AttnTokenizer, CTCTokenizer, StrhubTokenizer, build_tokenizer

__version__ = "0.1.0"

__all__ = [
    "CHARSET_36",
    "CHARSET_94",
    "AttnTokenizer",
    "CTCTokenizer",
    "ModelConfig",
    "OnnxModel",
    "Recognition",
    "StrhubTokenizer",
    "TextRecognitionModel",
    "build_tokenizer",
    "init_dtrb_weights",
    "list_stages",
    "load_model",
    "__version__",
]
