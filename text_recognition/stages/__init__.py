"""The four DTRB stages. Importing this package registers every stage choice in ``text_recognition.registry``."""

from . import feature_extraction, prediction, sequence_modeling, transformation  # noqa: F401
