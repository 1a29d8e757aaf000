"""The judge interface: one call per query row, one :class:`Judgment` per candidate.

A judge answers "is this candidate relevant to the query, given the labeled positives?". Every judge — an embedding
guide model, a cross-encoder, a generative LM local or over HTTP, a cascade of them — has the same signature::

    judge.judge(query, positives, candidates) -> list[Judgment]      # len == len(candidates)

and a :meth:`Judge.config` that names everything that can change its verdicts (model, prompt, thresholds). The
judgment cache keys on :meth:`Judge.cache_key` (a digest of that config), the query and the document, so a changed
judge never reuses another judge's verdicts.

A verdict is three-valued: ``RELEVANT`` flips a label under a relabeling strategy, ``NOT_RELEVANT`` keeps it, and
``NO_VERDICT`` (an unparseable or out-of-range model answer, a failed request, an undecided cascade) never changes a
label.
"""

from __future__ import annotations

import enum
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class Verdict(str, enum.Enum):
    """A judge's decision about one (query, candidate) pair."""

    RELEVANT = "relevant"
    NOT_RELEVANT = "not_relevant"
    NO_VERDICT = "no_verdict"


@dataclass(frozen=True)
class Judgment:
    """The verdict on one candidate, the judge's score (higher = more relevant; the scale is the judge's own, ``None``
    when it has none) and a short human-readable rationale (e.g. ``"guide score 0.83 > positive 0.79 - 0.05"``)."""

    verdict: Verdict
    score: float | None = None
    rationale: str = ""

    @property
    def relevant(self) -> bool:
        return self.verdict is Verdict.RELEVANT

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "score": self.score, "rationale": self.rationale}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Judgment:
        return cls(Verdict(value["verdict"]), value.get("score"), value.get("rationale", ""))


NO_VERDICT = Judgment(Verdict.NO_VERDICT, None, "no verdict")


class Judge(ABC):
    """Base class of the judges. Subclasses set ``name`` and implement :meth:`judge` and :meth:`config`."""

    name: str = "judge"

    @abstractmethod
    def judge(self, query: str, positives: Sequence[str], candidates: Sequence[str]) -> list[Judgment]:
        """One :class:`Judgment` per candidate, in order. ``positives`` are the texts of the labeled positives (the
        reference a candidate is compared with); passages are data, never instructions."""

    def judge_many(self, rows: Sequence[tuple[str, Sequence[str], Sequence[str]]]) -> list[list[Judgment]]:
        """:meth:`judge` over several ``(query, positives, candidates)`` rows; judges that batch across rows
        (models, HTTP clients) override it."""
        return [self.judge(query, positives, candidates) for query, positives, candidates in rows]

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serializable description of everything that changes this judge's verdicts (for the cache key, the
        relabeling summary and the model card)."""

    def cache_key(self) -> str:
        """A digest of ``name`` and :meth:`config`: judgments cached under one key are reused only by an identical
        judge."""
        payload = json.dumps({"name": self.name, "config": self.config()}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def weights_digest(model: Any) -> str | None:
    """A digest of a torch model's parameters and buffers (names, dtypes, shapes and bytes), for ``config()``.

    The judgment cache keys on it as well as on the folder name, so a model trained again into the same folder is
    judged again rather than answered from the verdicts of the weights it replaced. ``None`` for anything that is not
    a ``torch.nn.Module``. Hashing reads every weight once (about 0.1 s for a MiniLM)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
