"""Relabeled positives: judges that find false negatives, relabeling strategies and the judgment cache.

- judges (:mod:`.judges`, :mod:`.arhn`): ``judge(query, positives, candidates) -> list[Judgment]``;
- strategies (:mod:`.strategies`): ``rlhn``, ``hn_remove``, ``remove``, ``threshold``, ``arhn_r|f|rf``;
- :func:`relabel` (:mod:`.runner`): judge every row's negatives through the :class:`JudgmentCache`, then apply
  the strategies; a killed run resumes without judging a pair twice.
"""

from .arhn import AnswerabilityJudge
from .backends import ChatBackend, HFCausalLMBackend, OpenAICompatibleBackend, RateLimiter
from .base import NO_VERDICT, Judge, Judgment, Verdict
from .cache import JudgmentCache, doc_key, query_key
from .factory import JUDGE_TYPES, build_judge
from .judges import CascadeJudge, CrossEncoderJudge, EmbeddingJudge, GenerativeJudge, OpenAICompatibleJudge
from .prompts import PROMPT_VERSION
from .runner import RelabelResult, relabel
from .strategies import STRATEGIES, Strategy, apply_strategy, get_strategy

__all__ = [
    "JUDGE_TYPES",
    "NO_VERDICT",
    "PROMPT_VERSION",
    "STRATEGIES",
    "AnswerabilityJudge",
    "CascadeJudge",
    "ChatBackend",
    "CrossEncoderJudge",
    "EmbeddingJudge",
    "GenerativeJudge",
    "HFCausalLMBackend",
    "Judge",
    "Judgment",
    "JudgmentCache",
    "OpenAICompatibleBackend",
    "OpenAICompatibleJudge",
    "RateLimiter",
    "RelabelResult",
    "Strategy",
    "Verdict",
    "apply_strategy",
    "build_judge",
    "doc_key",
    "get_strategy",
    "query_key",
    "relabel",
]
