"""Answerability judge: the two LLM stages of ARHN (arXiv 2604.11092), over any chat backend.

- Stage 1, per (query, candidate): the model copies a verbatim answer span from the passage or says ``NO_ANSWER``
  (:func:`~hf_robust_ir.relabel.prompts.answer_span_messages`); a span that is not in the passage is no answer.
- Stage 2, per query: the labeled positives and the candidates that have an answer span are ranked list-wise by how
  directly they answer (:func:`~hf_robust_ir.relabel.prompts.ranking_messages`).

Labels per candidate, relative to ``r+``, the best (highest) rank of a labeled positive in stage 2:

- ``"R"``: has an answer span and is ranked above ``r+`` → becomes a positive;
- ``"F"``: has an answer span but is ranked below ``r+`` → removed from the negatives (neither label is trusted);
- ``None``: no answer span, or no decision (unparseable answer, failed request, no positives) → stays as labeled.

ARHN reports R and F together as best. This complements RLHN's single list prompt (Thakur et al. 2025, arXiv
2505.16967; :class:`~hf_robust_ir.relabel.judges.GenerativeJudge` with ``mode="list"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .backends import ChatBackend
from .base import Judge, Judgment, Verdict
from .prompts import (
    NO_ANSWER,
    PROMPT_VERSION,
    answer_span_messages,
    parse_answer_span,
    parse_ranking,
    ranking_messages,
)

Row = tuple[str, Sequence[str], Sequence[str]]
RELABEL, FILTER = "R", "F"


@dataclass(frozen=True)
class _Outcome:
    label: str | None  # "R", "F" or None
    decided: bool  # False: the model gave no usable answer for this candidate
    rationale: str


class AnswerabilityJudge(Judge):
    """ARHN's answer-span + list-wise ranking judge (arXiv 2604.11092) over a
    :class:`~hf_robust_ir.relabel.backends.ChatBackend`.

    As a :class:`~hf_robust_ir.relabel.base.Judge`: ``"R"`` → RELEVANT (score 2), ``"F"`` → NOT_RELEVANT with score 1
    and a rationale starting ``"F:"``, no answer span → NOT_RELEVANT (score 0), no decision → NO_VERDICT. A strategy
    that removes F candidates reads :meth:`arhn_labels` (or the score 1).
    """

    name = "arhn"
    listwise = True  # stage 2 ranks a query's candidates together

    def __init__(
        self,
        backend: ChatBackend,
        max_passage_chars: int | None = 4000,
        max_span_tokens: int = 128,
        max_ranking_tokens: int | None = None,
    ):
        self.backend = backend
        self.max_passage_chars = max_passage_chars
        self.max_span_tokens = max_span_tokens
        self.max_ranking_tokens = max_ranking_tokens

    # ---------------------------------------------------------------- the two stages
    def _spans(self, pairs: Sequence[tuple[str, str]]) -> list[str | None]:
        """Parsed stage-1 answers: a span, NO_ANSWER, or None (unusable)."""
        prompts = [answer_span_messages(q, p, self.max_passage_chars) for q, p in pairs]
        answers = self.backend.complete(prompts, self.max_span_tokens) if prompts else []
        return [parse_answer_span(answer, passage) for answer, (_, passage) in zip(answers, pairs)]

    def answer_spans(self, query: str, passages: Sequence[str]) -> list[str | None]:
        """Stage 1: the verbatim answer span of each passage (whitespace-normalized), or ``None`` for ``NO_ANSWER``
        and for an unusable answer."""
        return [None if s in (None, NO_ANSWER) else s for s in self._spans([(query, p) for p in passages])]

    def _ranking_tokens(self, count: int) -> int:
        return self.max_ranking_tokens or 8 + 6 * count

    def _rankings(self, lists: Sequence[tuple[str, Sequence[str]]]) -> list[list[int] | None]:
        prompts = [ranking_messages(q, ps, self.max_passage_chars) for q, ps in lists]
        if not prompts:
            return []
        tokens = self._ranking_tokens(max(len(ps) for _, ps in lists))
        answers = self.backend.complete(prompts, tokens)
        return [parse_ranking(answer, len(ps)) for answer, (_, ps) in zip(answers, lists)]

    def rank(self, query: str, passages: Sequence[str]) -> list[int] | None:
        """Stage 2: 0-based passage indices, most direct answer first; ``None`` if the answer is not a permutation."""
        return self._rankings([(query, passages)])[0]

    # ---------------------------------------------------------------- labels
    def _outcomes(self, rows: Sequence[Row]) -> list[list[_Outcome]]:
        pairs = [(q, c) for q, pos, cands in rows if pos for c in cands]
        spans = iter(self._spans(pairs))
        per_row: list[list[str | None] | None] = [[next(spans) for _ in c] if pos else None for _, pos, c in rows]
        lists, owners = [], []
        for i, ((query, positives, candidates), row_spans) in enumerate(zip(rows, per_row)):
            answerable = [k for k, s in enumerate(row_spans or []) if s not in (None, NO_ANSWER)]
            if answerable:
                lists.append((query, [*positives, *(candidates[k] for k in answerable)]))
                owners.append((i, answerable))
        rankings = dict(zip((i for i, _ in owners), self._rankings(lists)))
        answerable_by_row = dict(owners)
        out = []
        for i, ((_, positives, candidates), row_spans) in enumerate(zip(rows, per_row)):
            if row_spans is None:
                out.append([_Outcome(None, False, "no positive to compare with")] * len(candidates))
                continue
            ranking = rankings.get(i)
            ranks: dict[int, int] = {}
            best_positive = None
            if ranking is not None:
                positions = {index: position for position, index in enumerate(ranking)}
                best_positive = min(positions[p] for p in range(len(positives)))
                ranks = {k: positions[len(positives) + j] for j, k in enumerate(answerable_by_row.get(i, []))}
            outcomes = []
            for k, span in enumerate(row_spans):
                if span is None:
                    outcomes.append(_Outcome(None, False, "unusable answer-span output"))
                elif span == NO_ANSWER:
                    outcomes.append(_Outcome(None, True, "NO_ANSWER"))
                elif ranking is None:
                    outcomes.append(_Outcome(None, False, f"answer span {span!r}; unusable ranking output"))
                elif ranks[k] < best_positive:
                    why = f"R: ranked {ranks[k] + 1}, above the best positive at {best_positive + 1}; span {span!r}"
                    outcomes.append(_Outcome(RELABEL, True, why))
                else:
                    why = f"F: ranked {ranks[k] + 1}, below the best positive at {best_positive + 1}; span {span!r}"
                    outcomes.append(_Outcome(FILTER, True, why))
            out.append(outcomes)
        return out

    def arhn_labels_many(self, rows: Sequence[Row]) -> list[list[str | None]]:
        return [[o.label for o in outcomes] for outcomes in self._outcomes(rows)]

    def arhn_decisions(
        self, query: str, positives: Sequence[str], candidates: Sequence[str]
    ) -> list[tuple[str | None, bool]]:
        """:meth:`arhn_labels` with, per candidate, whether the model decided it (``False``: no usable answer or no
        positive, so the relabeling cache does not keep the ``None`` and a rerun asks again)."""
        return [(o.label, o.decided) for o in self._outcomes([(query, positives, candidates)])[0]]

    def arhn_labels(self, query: str, positives: Sequence[str], candidates: Sequence[str]) -> list[str | None]:
        """Per candidate ``"R"`` (ranked above the best labeled positive → becomes positive), ``"F"`` (below it but
        has an answer span → removed from the negatives) or ``None`` (stays as labeled)."""
        return self.arhn_labels_many([(query, positives, candidates)])[0]

    # ---------------------------------------------------------------- Judge
    def judge(self, query: str, positives: Sequence[str], candidates: Sequence[str]) -> list[Judgment]:
        return self.judge_many([(query, positives, candidates)])[0]

    def judge_many(self, rows: Sequence[Row]) -> list[list[Judgment]]:
        return [[self._judgment(o) for o in outcomes] for outcomes in self._outcomes(rows)]

    @staticmethod
    def _judgment(outcome: _Outcome) -> Judgment:
        if not outcome.decided:
            return Judgment(Verdict.NO_VERDICT, None, outcome.rationale)
        if outcome.label == RELABEL:
            return Judgment(Verdict.RELEVANT, 2.0, outcome.rationale)
        return Judgment(Verdict.NOT_RELEVANT, 1.0 if outcome.label == FILTER else 0.0, outcome.rationale)

    def config(self) -> dict[str, Any]:
        return {
            "backend": self.backend.config(),
            "prompt_version": PROMPT_VERSION,
            "max_passage_chars": self.max_passage_chars,
            "max_span_tokens": self.max_span_tokens,
            "max_ranking_tokens": self.max_ranking_tokens,
        }
