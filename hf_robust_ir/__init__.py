"""hf_robust_ir: dense retrievers and rerankers robust to wrong training labels."""

__version__ = "0.1.0"
