"""Synthetic training data: queries for passages (self-training, NST) and graded documents for real queries (SyCL).

- :mod:`.queries`: :class:`QueryGenerator` (:class:`ExtractiveQueryGenerator`, no model; :class:`HFQueryGenerator`,
  doc2query with a seq2seq or causal LM), :func:`train_query_generator`, :func:`synthetic_query_rows`;
- :mod:`.documents`: :class:`GradedDocumentGenerator`, passages at relevance grades 0..3 written by a chat backend.
"""

from .documents import (
    GRADE_DEFINITIONS,
    GRADED_DOCUMENT_PROMPT_VERSION,
    GRADED_DOCUMENT_SYSTEM,
    REAL_POSITIVE_GRADE,
    GradedDocumentGenerator,
    graded_document_messages,
    parse_generated_document,
)
from .queries import (
    DEFAULT_CAUSAL_PROMPT,
    DEFAULT_SEQ2SEQ_TEMPLATE,
    GENERATOR_CONFIG_NAME,
    ExtractiveQueryGenerator,
    HFQueryGenerator,
    QueryGenerator,
    doc2query_features,
    synthetic_query_rows,
    train_query_generator,
)

__all__ = [
    "DEFAULT_CAUSAL_PROMPT",
    "DEFAULT_SEQ2SEQ_TEMPLATE",
    "GENERATOR_CONFIG_NAME",
    "GRADED_DOCUMENT_PROMPT_VERSION",
    "GRADED_DOCUMENT_SYSTEM",
    "GRADE_DEFINITIONS",
    "REAL_POSITIVE_GRADE",
    "ExtractiveQueryGenerator",
    "GradedDocumentGenerator",
    "HFQueryGenerator",
    "QueryGenerator",
    "doc2query_features",
    "graded_document_messages",
    "parse_generated_document",
    "synthetic_query_rows",
    "train_query_generator",
]
