"""The four stages: DTRB's choices, and the ViT / PARSeq / ViTSTR stages of strhub. Importing this package registers
every stage choice in ``text_recognition.registry``."""

from . import feature_extraction, prediction, sequence_modeling, transformation  # noqa: F401
from . import parseq, vit, vitstr  # noqa: F401  (after DTRB's, so that list_stages lists DTRB's first)
