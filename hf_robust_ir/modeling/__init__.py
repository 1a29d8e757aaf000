"""Models: the BiEncoder retriever and the CrossEncoder reranker; a hybrid (dense + BM25) frozen guide."""

from .bi_encoder import BiEncoder, BiEncoderConfig
from .cross_encoder import CrossEncoder, CrossEncoderConfig
from .hybrid_guide import HybridGuide, LexicalEncoder
from .pooling import POOLING_MODES, pool

__all__ = [
    "BiEncoder",
    "BiEncoderConfig",
    "CrossEncoder",
    "CrossEncoderConfig",
    "HybridGuide",
    "LexicalEncoder",
    "POOLING_MODES",
    "pool",
]
