"""Data: the canonical row schema and loaders for BEIR folders and Hugging Face datasets."""

from .beir import load_beir, rows_from_qrels
from .hf_formats import (
    content_id,
    detect_format,
    from_flagembedding,
    from_sentence_transformers,
    from_tevatron,
    load_training_data,
)
from .schema import EXCLUDED_COLUMN, ROW_FEATURES, DataFormatError, RetrievalCorpus, TrainingData, document_text
from .token_noise import TokenNoise

__all__ = [
    "EXCLUDED_COLUMN",
    "ROW_FEATURES",
    "DataFormatError",
    "RetrievalCorpus",
    "TokenNoise",
    "TrainingData",
    "content_id",
    "detect_format",
    "document_text",
    "from_flagembedding",
    "from_sentence_transformers",
    "from_tevatron",
    "load_beir",
    "load_training_data",
    "rows_from_qrels",
]
