"""Models: the BiEncoder retriever and the CrossEncoder reranker."""

from .bi_encoder import BiEncoder, BiEncoderConfig
from .cross_encoder import CrossEncoder, CrossEncoderConfig
from .pooling import POOLING_MODES, pool

__all__ = ["BiEncoder", "BiEncoderConfig", "CrossEncoder", "CrossEncoderConfig", "POOLING_MODES", "pool"]
