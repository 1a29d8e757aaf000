"""The judges: an embedding guide model, a cross-encoder, a generative LM (local or over HTTP) and a cascade.

All implement :class:`~hf_robust_ir.relabel.base.Judge`: ``judge(query, positives, candidates) -> list[Judgment]``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends import ChatBackend, OpenAICompatibleBackend
from .base import NO_VERDICT, Judge, Judgment, Verdict, weights_digest
from .prompts import PROMPT_VERSION, list_messages, parse_relevant_list, pointwise_messages

Row = tuple[str, Sequence[str], Sequence[str]]
POSITIVE_REFERENCES = {"best": max, "mean": lambda scores: sum(scores) / len(scores), "worst": min}


def _model_name(model: Any) -> str:
    """The name or path a model was loaded from (for ``config()``), else its class name."""
    for owner in (model, getattr(model, "model", None), getattr(model, "query_encoder", None)):
        name = getattr(getattr(owner, "config", None), "_name_or_path", None)
        if name:
            return str(name)
    base = getattr(getattr(model, "retrieval_config", None), "base_model", None)
    return str(base) if base else type(model).__name__


# BiEncoderConfig fields that never change a guide's vectors: the training temperature, the folder it was loaded from
# (the weights digest stands for the weights), the tower layout (two copies of one tower embed alike) and
# ``normalize`` (in ``config()`` as ``similarity``)
_SETTINGS_WITHOUT_EFFECT = ("temperature", "base_model", "separate_towers", "normalize")


def _encoding_settings(retrieval_config: Any) -> dict[str, Any]:
    """The settings that turn texts into a guide's vectors (pooling, prefixes, max lengths), for ``config()``."""
    settings = dataclasses.asdict(retrieval_config)
    return {key: value for key, value in settings.items() if key not in _SETTINGS_WITHOUT_EFFECT}


class EmbeddingJudge(Judge):
    """A guide (teacher) embedding model with a margin rule, as in GISTEmbed (Solatorio 2024, arXiv 2402.16829) and
    NV-Retriever's positive-aware mining (Moreira et al. 2024, arXiv 2407.15831).

    With ``s(q, d) = q·d`` the guide's similarity (cosine when the model normalizes) and ``p = max_{d+} s(q, d+)`` the
    best labeled positive, a candidate is RELEVANT (a likely false negative) iff

    - ``margin_strategy="absolute"``: ``s > p - margin`` (GISTEmbed; ``margin=0`` masks candidates scoring above
      the positive);
    - ``margin_strategy="relative"``: ``s > p * (1 - margin)`` (NV-Retriever's TopK-PercPos: ``margin=0.05`` keeps as
      negatives only candidates under 95% of the positive's score),

    else NOT_RELEVANT. ``positive_reference`` picks ``p`` among the labeled positives: ``"best"`` (the maximum, as
    GISTEmbed; precise, but with many positives only candidates above all of them are flagged), ``"mean"`` or
    ``"worst"`` (the minimum: a candidate the guide prefers to some labeled positive). The comparison is strict: a
    candidate exactly at the threshold stays negative. A query without positives has no reference: every candidate
    gets NO_VERDICT. With ``"best"`` these are the rules of sentence-transformers' ``GISTEmbedLoss``.

    ``score_threshold=t`` replaces that rule by one on the candidate's own score, NV-Retriever's TopK-Abs: RELEVANT
    iff ``s > t``. It needs no labeled positive (every candidate gets a verdict) and suits data whose labeled
    positives score below the mined negatives, where every rule relative to them flags nearly everything.
    """

    name = "embedding"

    def __init__(
        self,
        model: Any,
        margin: float = 0.0,
        margin_strategy: str = "absolute",
        batch_size: int = 64,
        max_cached_documents: int = 100_000,
        positive_reference: str = "best",
        score_threshold: float | None = None,
        **load_kwargs: Any,
    ):
        from ..modeling import BiEncoder

        if positive_reference not in POSITIVE_REFERENCES:
            raise ValueError(
                f"positive_reference must be one of {list(POSITIVE_REFERENCES)}, got {positive_reference!r}"
            )

        if margin_strategy not in ("absolute", "relative"):
            raise ValueError(f"margin_strategy must be 'absolute' or 'relative', got {margin_strategy!r}")
        if score_threshold is not None and (margin, margin_strategy, positive_reference) != (0.0, "absolute", "best"):
            raise ValueError(
                "score_threshold is a rule on the candidate's own score: give it without margin, margin_strategy or "
                "positive_reference"
            )
        if isinstance(model, (str, os.PathLike)):
            model = BiEncoder.from_pretrained(model, **load_kwargs)
        self.model = model
        self.margin = float(margin)
        self.margin_strategy = margin_strategy
        self.batch_size = batch_size
        self.max_cached_documents = max_cached_documents
        self.positive_reference = positive_reference
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self._document_vectors: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> vector, least recent first

    def _encode_documents(self, documents: list[str]) -> dict[str, np.ndarray]:
        """Vectors of ``documents``; the last ``max_cached_documents`` texts are kept, so a passage that is a
        candidate of many queries (hard negatives are shared) is encoded once."""
        memo = self._document_vectors
        missing = [d for d in documents if d not in memo]
        if missing:
            for text, vector in zip(missing, self.model.encode(missing, "document", batch_size=self.batch_size)):
                memo[text] = vector
        found = {}
        for d in documents:
            memo.move_to_end(d)
            found[d] = memo[d]
        while len(memo) > max(self.max_cached_documents, len(documents)):
            memo.popitem(last=False)
        return found

    def with_rule(self, **rule: Any) -> EmbeddingJudge:
        """The same guide under another rule (``margin``, ``margin_strategy``, ``positive_reference`` or
        ``score_threshold``), sharing this judge's document vectors: judging the same rows under several rules encodes
        them once. Settings not given are this judge's, except that a score threshold and a margin rule exclude each
        other: giving one drops the other."""
        margin_keys = {"margin", "margin_strategy", "positive_reference"}
        unknown = set(rule) - margin_keys - {"score_threshold"}
        if unknown:
            raise ValueError(f"with_rule takes {sorted(margin_keys | {'score_threshold'})}, got {sorted(unknown)}")
        current = {
            "margin": self.margin,
            "margin_strategy": self.margin_strategy,
            "positive_reference": self.positive_reference,
            "score_threshold": self.score_threshold,
        }
        if rule.get("score_threshold") is not None:
            settings = dict(rule)  # the margin rule is not carried over
        elif margin_keys & set(rule):
            settings = {**current, "score_threshold": None, **rule}
        else:
            settings = {**current, **rule}
        judge = EmbeddingJudge(
            self.model, batch_size=self.batch_size, max_cached_documents=self.max_cached_documents, **settings
        )
        judge._document_vectors = self._document_vectors
        return judge

    def threshold(self, positive_score: float) -> float:
        if self.score_threshold is not None:
            return self.score_threshold
        if self.margin_strategy == "absolute":
            return positive_score - self.margin
        return positive_score * (1.0 - self.margin)

    def _rule(self, positive_score: float) -> str:
        if self.score_threshold is not None:
            return f"score threshold {self.score_threshold:g}"
        if self.margin_strategy == "absolute":
            return f"{self.positive_reference} positive {positive_score:.4f} - {self.margin:g}"
        return f"{self.positive_reference} positive {positive_score:.4f} * (1 - {self.margin:g})"

    def judge(self, query: str, positives: Sequence[str], candidates: Sequence[str]) -> list[Judgment]:
        return self.judge_many([(query, positives, candidates)])[0]

    def judge_many(self, rows: Sequence[Row]) -> list[list[Judgment]]:
        reads_positives = self.score_threshold is None  # the score-threshold rule never reads them: not encoded
        queries = list(dict.fromkeys(q for q, _, _ in rows))
        documents = list(
            dict.fromkeys(d for _, pos, cands in rows for d in (*(pos if reads_positives else ()), *cands))
        )
        query_vectors = self.model.encode(queries, "query", batch_size=self.batch_size)
        document_vectors = self._encode_documents(documents)
        query_index = {q: i for i, q in enumerate(queries)}
        out = []
        for query, positives, candidates in rows:
            if reads_positives and not positives:
                out.append([NO_VERDICT] * len(candidates))
                continue
            q = query_vectors[query_index[query]]
            positive_score = (
                POSITIVE_REFERENCES[self.positive_reference]([float(np.dot(q, document_vectors[p])) for p in positives])
                if reads_positives
                else float("nan")
            )
            threshold = self.threshold(positive_score)
            judgments = []
            for candidate in candidates:
                score = float(np.dot(q, document_vectors[candidate]))
                relevant = score > threshold
                sign = ">" if relevant else "<="
                judgments.append(
                    Judgment(
                        Verdict.RELEVANT if relevant else Verdict.NOT_RELEVANT,
                        score,
                        f"guide score {score:.4f} {sign} {self._rule(positive_score)}",
                    )
                )
            out.append(judgments)
        return out

    def config(self) -> dict[str, Any]:
        return {
            "model": _model_name(self.model),
            "weights": weights_digest(self.model),
            "encoding": _encoding_settings(self.model.retrieval_config),
            "margin": self.margin,
            "margin_strategy": self.margin_strategy,
            "positive_reference": self.positive_reference,
            "similarity": "cosine" if self.model.retrieval_config.normalize else "dot",
            # only when set: a margin rule has no score threshold
            **({"score_threshold": self.score_threshold} if self.score_threshold is not None else {}),
        }


class CrossEncoderJudge(Judge):
    """Any one-logit sequence-classification reranker (:class:`~hf_robust_ir.modeling.CrossEncoder`).

    With ``s`` the reranker's raw score and ``p`` the best labeled positive's score, a candidate is RELEVANT iff
    ``s >= threshold`` (when ``threshold`` is set) or ``s >= p - margin`` (when ``margin`` is set and the query has
    positives), else NOT_RELEVANT. With only ``margin`` and no positives, the verdict is NO_VERDICT.
    """

    name = "cross_encoder"

    def __init__(
        self,
        model: Any,
        threshold: float | None = None,
        margin: float | None = None,
        batch_size: int = 32,
        **load_kwargs: Any,
    ):
        from ..modeling import CrossEncoder

        if threshold is None and margin is None:
            raise ValueError("CrossEncoderJudge needs a threshold, a margin, or both")
        if isinstance(model, (str, os.PathLike)):
            model = CrossEncoder.from_pretrained(model, **load_kwargs)
        self.model = model
        self.threshold = None if threshold is None else float(threshold)
        self.margin = None if margin is None else float(margin)
        self.batch_size = batch_size

    def judge(self, query: str, positives: Sequence[str], candidates: Sequence[str]) -> list[Judgment]:
        return self.judge_many([(query, positives, candidates)])[0]

    def judge_many(self, rows: Sequence[Row]) -> list[list[Judgment]]:
        with_positives = self.margin is not None  # positives are scored only to apply the margin rule
        pairs = [(q, d) for q, pos, cands in rows for d in ((*pos, *cands) if with_positives else cands)]
        scores = self.model.predict(pairs, batch_size=self.batch_size).tolist()
        out, start = [], 0
        for _, positives, candidates in rows:
            positive_scores: list[float] = []
            if with_positives:
                positive_scores = scores[start : start + len(positives)]
                start += len(positives)
            candidate_scores = scores[start : start + len(candidates)]
            start += len(candidates)
            best = max(positive_scores) if positive_scores else None
            out.append([self._verdict(float(s), best) for s in candidate_scores])
        return out

    def _verdict(self, score: float, best_positive: float | None) -> Judgment:
        reasons = []
        if self.threshold is not None and score >= self.threshold:
            reasons.append(f"score {score:.4f} >= threshold {self.threshold:g}")
        if self.margin is not None and best_positive is not None and score >= best_positive - self.margin:
            reasons.append(f"score {score:.4f} >= best positive {best_positive:.4f} - {self.margin:g}")
        if reasons:
            return Judgment(Verdict.RELEVANT, score, "; ".join(reasons))
        if self.threshold is None and best_positive is None:
            return Judgment(Verdict.NO_VERDICT, score, f"score {score:.4f}; no positive to compare with")
        rules = []
        if self.threshold is not None:
            rules.append(f"threshold {self.threshold:g}")
        if self.margin is not None and best_positive is not None:
            rules.append(f"best positive {best_positive:.4f} - {self.margin:g}")
        return Judgment(Verdict.NOT_RELEVANT, score, f"score {score:.4f} < " + " and ".join(rules))

    def config(self) -> dict[str, Any]:
        return {
            "model": _model_name(self.model),
            "weights": weights_digest(self.model),
            "threshold": self.threshold,
            "margin": self.margin,
            "max_length": self.model.max_length,
        }


class GenerativeJudge(Judge):
    """A generative LM behind a :class:`~hf_robust_ir.relabel.backends.ChatBackend`, with one of two fixed prompts
    (:mod:`~hf_robust_ir.relabel.prompts`).

    - ``mode="pointwise"``: one prompt per candidate; with ``(ℓ_yes, ℓ_no)`` the answer's first-token
      log-probabilities, ``P = exp(ℓ_yes) / (exp(ℓ_yes) + exp(ℓ_no))`` and the candidate is RELEVANT iff
      ``P >= threshold``. If the model puts less than ``min_answer_mass`` probability on yes and no together
      (``exp(ℓ_yes) + exp(ℓ_no)``) it is not answering the question asked: NO_VERDICT.
    - ``mode="list"``: the RLHN list prompt (Thakur et al. 2025, arXiv 2505.16967), the question, the labeled
      positives and up to ``max_candidates_per_prompt`` numbered candidates per prompt; the candidates named in a
      strictly parsed ``RELEVANT: …`` answer are RELEVANT (score 1), the others NOT_RELEVANT (score 0).

    An unparseable or out-of-range answer, or a failed request, gives NO_VERDICT for the candidates it covers.
    """

    name = "generative"

    def __init__(
        self,
        backend: ChatBackend,
        mode: str = "pointwise",
        threshold: float = 0.5,
        min_answer_mass: float = 0.5,
        max_candidates_per_prompt: int = 20,
        max_new_tokens: int = 64,
        max_passage_chars: int | None = 4000,
    ):
        if mode not in ("pointwise", "list"):
            raise ValueError(f"mode must be 'pointwise' or 'list', got {mode!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.backend = backend
        self.mode = mode
        self.threshold = float(threshold)
        self.min_answer_mass = float(min_answer_mass)
        self.max_candidates_per_prompt = max_candidates_per_prompt
        self.max_new_tokens = max_new_tokens
        self.max_passage_chars = max_passage_chars

    @property
    def listwise(self) -> bool:
        """A list prompt judges a candidate among the others: it always gets a query's whole candidate list."""
        return self.mode == "list"

    def judge(self, query: str, positives: Sequence[str], candidates: Sequence[str]) -> list[Judgment]:
        return self.judge_many([(query, positives, candidates)])[0]

    def judge_many(self, rows: Sequence[Row]) -> list[list[Judgment]]:
        if self.mode == "pointwise":
            return self._pointwise(rows)
        return self._list(rows)

    def _pointwise(self, rows: Sequence[Row]) -> list[list[Judgment]]:
        prompts = [pointwise_messages(q, c, self.max_passage_chars) for q, _, cands in rows for c in cands]
        answers = iter(self.backend.yes_no_logprobs(prompts) if prompts else [])
        return [[self._pointwise_verdict(next(answers)) for _ in candidates] for _, _, candidates in rows]

    def _pointwise_verdict(self, logprobs: tuple[float, float] | None) -> Judgment:
        if logprobs is None:
            return Judgment(Verdict.NO_VERDICT, None, "no answer from the model")
        yes, no = logprobs
        mass = math.exp(yes) + math.exp(no)
        if not mass > 0 or mass < self.min_answer_mass:
            return Judgment(Verdict.NO_VERDICT, None, f"P(yes) + P(no) = {mass:.3g} < {self.min_answer_mass:g}")
        p_yes = 1.0 / (1.0 + math.exp(no - yes)) if no - yes < 700 else 0.0
        relevant = p_yes >= self.threshold
        sign = ">=" if relevant else "<"
        return Judgment(
            Verdict.RELEVANT if relevant else Verdict.NOT_RELEVANT,
            p_yes,
            f"P(yes | yes or no) = {p_yes:.3f} {sign} {self.threshold:g}",
        )

    def _list(self, rows: Sequence[Row]) -> list[list[Judgment]]:
        size = self.max_candidates_per_prompt
        prompts, spans = [], []
        for row, (query, positives, candidates) in enumerate(rows):
            for start in range(0, len(candidates), size):
                chunk = candidates[start : start + size]
                prompts.append(list_messages(query, positives, chunk, self.max_passage_chars))
                spans.append((row, start, len(chunk)))
        answers = self.backend.complete(prompts, self.max_new_tokens) if prompts else []
        out: list[list[Judgment]] = [[NO_VERDICT] * len(candidates) for _, _, candidates in rows]
        for (row, start, count), answer in zip(spans, answers):
            named = parse_relevant_list(answer, count)
            for k in range(count):
                if named is None:
                    judgment = Judgment(Verdict.NO_VERDICT, None, "unparseable list answer")
                elif k in named:
                    judgment = Judgment(Verdict.RELEVANT, 1.0, f"list judge named candidate {k + 1} of {count}")
                else:
                    judgment = Judgment(Verdict.NOT_RELEVANT, 0.0, f"list judge did not name candidate {k + 1}")
                out[row][start + k] = judgment
        return out

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "backend": self.backend.config(),
            "mode": self.mode,
            "prompt_version": PROMPT_VERSION,
            "max_passage_chars": self.max_passage_chars,
        }
        if self.mode == "pointwise":
            config.update(threshold=self.threshold, min_answer_mass=self.min_answer_mass)
        else:
            config.update(max_candidates_per_prompt=self.max_candidates_per_prompt, max_new_tokens=self.max_new_tokens)
        return config


class OpenAICompatibleJudge(GenerativeJudge):
    """:class:`GenerativeJudge` over an OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp, Ollama).

    ``backend_kwargs`` go to :class:`~hf_robust_ir.relabel.backends.OpenAICompatibleBackend` (``api_key``,
    ``api_key_env``, ``timeout``, ``max_retries``, ``backoff_base``, ``backoff_max``, ``requests_per_second``,
    ``max_concurrency``, …).
    """

    name = "openai_compatible"

    def __init__(
        self,
        base_url: str,
        model: str,
        mode: str = "pointwise",
        threshold: float = 0.5,
        min_answer_mass: float = 0.5,
        max_candidates_per_prompt: int = 20,
        max_new_tokens: int = 64,
        max_passage_chars: int | None = 4000,
        **backend_kwargs: Any,
    ):
        super().__init__(
            OpenAICompatibleBackend(base_url, model, **backend_kwargs),
            mode=mode,
            threshold=threshold,
            min_answer_mass=min_answer_mass,
            max_candidates_per_prompt=max_candidates_per_prompt,
            max_new_tokens=max_new_tokens,
            max_passage_chars=max_passage_chars,
        )


class CascadeJudge(Judge):
    """A cheap judge on every query, an expensive judge only on the queries the cheap one escalates (RLHN's cascade,
    Thakur et al. 2025, arXiv 2505.16967).

    A query is escalated when the cheap judge flagged (RELEVANT) any of its candidates; with
    ``escalate="flagged_or_unsure"`` also when it gave any NO_VERDICT or, with ``unsure_band=(low, high)``, any score
    with ``low <= score <= high``. Every candidate of an escalated query gets the expensive judge's verdict (a
    NO_VERDICT there stays NO_VERDICT); the other queries keep the cheap verdicts. Rationales start with the judge
    that decided. The decision is per query, so the judge is list-wise: the relabeling runner always gives it a
    query's whole candidate list. ``stats`` counts queries and escalations over this judge's lifetime.
    """

    name = "cascade"

    def __init__(
        self,
        cheap: Judge,
        expensive: Judge,
        escalate: str = "flagged",
        unsure_band: tuple[float, float] | None = None,
    ):
        if escalate not in ("flagged", "flagged_or_unsure"):
            raise ValueError(f"escalate must be 'flagged' or 'flagged_or_unsure', got {escalate!r}")
        if unsure_band is not None:
            if escalate != "flagged_or_unsure":
                raise ValueError("unsure_band needs escalate='flagged_or_unsure'")
            low, high = unsure_band
            if low > high:
                raise ValueError(f"unsure_band must be (low, high) with low <= high, got {unsure_band}")
            unsure_band = (float(low), float(high))
        self.cheap, self.expensive = cheap, expensive
        self.escalate = escalate
        self.unsure_band = unsure_band
        self.stats = {"queries": 0, "escalated": 0}

    listwise = True  # whether a candidate is escalated depends on the other candidates of its query

    def _escalates(self, judgments: Sequence[Judgment]) -> bool:
        if any(j.verdict is Verdict.RELEVANT for j in judgments):
            return True
        if self.escalate == "flagged":
            return False
        if any(j.verdict is Verdict.NO_VERDICT for j in judgments):
            return True
        if self.unsure_band is not None:
            low, high = self.unsure_band
            return any(j.score is not None and low <= j.score <= high for j in judgments)
        return False

    def judge(self, query: str, positives: Sequence[str], candidates: Sequence[str]) -> list[Judgment]:
        return self.judge_many([(query, positives, candidates)])[0]

    def judge_many(self, rows: Sequence[Row]) -> list[list[Judgment]]:
        cheap = self.cheap.judge_many(rows)
        escalated = [i for i, judgments in enumerate(cheap) if self._escalates(judgments)]
        expensive = self.expensive.judge_many([rows[i] for i in escalated]) if escalated else []
        self.stats["queries"] += len(rows)
        self.stats["escalated"] += len(escalated)
        out = [
            [Judgment(j.verdict, j.score, f"{self.cheap.name}: {j.rationale}") for j in judgments]
            for judgments in cheap
        ]
        for i, judgments in zip(escalated, expensive):
            out[i] = [
                Judgment(j.verdict, j.score, f"{self.expensive.name} (escalated): {j.rationale}") for j in judgments
            ]
        return out

    def config(self) -> dict[str, Any]:
        return {
            "cheap": {"name": self.cheap.name, "config": self.cheap.config()},
            "expensive": {"name": self.expensive.name, "config": self.expensive.config()},
            "escalate": self.escalate,
            "unsure_band": list(self.unsure_band) if self.unsure_band is not None else None,
        }
