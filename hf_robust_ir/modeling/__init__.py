"""Models: the BiEncoder retriever and the CrossEncoder reranker."""

from .bi_encoder import BiEncoder, BiEncoderConfig
from .pooling import POOLING_MODES, pool

__all__ = ["BiEncoder", "BiEncoderConfig", "POOLING_MODES", "pool"]
