"""Collate canonical rows into tokenized queries, deduplicated documents and the target matrix over the batch.

For a batch of ``B`` queries the collator samples, per query, positives and negatives from its candidate list, puts
every sampled document once into the batch (``C`` unique documents, in-batch documents included) and emits

- ``labels[B, C]``: the relevance of document ``c`` for query ``i`` *from query i's full candidate list*, so a document
  that is a positive for query ``i`` is a positive for it even when it arrived as another query's positive or negative.
  When a query has several training rows (one per positive, say, as triples files have), its full list pools the
  lists of all of them (:meth:`RetrievalCollator.set_query_candidates`, which ``RetrievalTrainer`` calls with its
  training rows), so one row's positive is never another row's in-batch negative;
- ``mask[B, C]``: which documents take part in query ``i``'s softmax (repeated document ids are kept once; a
  document query ``i`` excludes, :data:`~hf_robust_ir.data.schema.EXCLUDED_COLUMN`, takes no part in it);
- ``teacher[B, C]``: teacher scores, ``NaN`` where query ``i`` has none for document ``c``.

It also emits what is needed to rebuild the matrix over documents gathered from several processes
(``doc_keys``, ``candidate_keys``, ``candidate_labels``, ``candidate_teacher``; see :func:`build_targets`), the
batch's document ids in column order (``doc_ids``) and the raw ``query_texts`` / ``document_texts`` (for a guide model).
Sampling is deterministic in ``(seed, epoch, query_id)``: a new sample each epoch, the same one after a resume.

With ``student_noise`` (a :class:`~hf_robust_ir.data.token_noise.TokenNoise`, the noisy student of NST) the tokenized
``query`` and ``document`` inputs, which only the model being trained reads, get token-level noise. Everything else
stays clean: ``query_texts`` / ``document_texts`` (what a frozen guide or teacher model encodes), ``labels``, ``mask``
and ``teacher``, so the student learns from noisy inputs against targets computed on clean ones. The noise is
deterministic in ``(noise seed, epoch, the batch's query ids)``, with separate streams for queries and documents.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .schema import check_candidate_lists, excluded_doc_ids
from .token_noise import TokenNoise

logger = logging.getLogger(__name__)

PAD_KEY = -1
EXCLUDED_LABEL = float("-inf")
"""The candidate label that marks a document its query excludes (:data:`~hf_robust_ir.data.schema.EXCLUDED_COLUMN`):
not a negative of the query, masked out of its softmax; a label of the same document elsewhere in the list wins."""


def document_key(doc_id: str) -> int:
    """A stable non-negative 63-bit integer for a document id, comparable across processes."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def _listed(values: Any) -> list:
    """A row's optional list column (a list, an array, or None) as a list."""
    return [] if values is None else list(values)


def _candidate_lists(row: Mapping[str, Any]) -> tuple[list, list, list]:
    """A row's ``doc_ids``, ``labels`` and teacher scores (NaN where it has none), followed by the documents it
    excludes with label :data:`EXCLUDED_LABEL` and no teacher score."""
    doc_ids, labels = list(row["doc_ids"]), list(row["labels"])
    teacher = _listed(row.get("teacher_scores"))
    if len(teacher) != len(doc_ids):
        teacher = [math.nan] * len(doc_ids)
    excluded = excluded_doc_ids(row)
    return doc_ids + excluded, labels + [EXCLUDED_LABEL] * len(excluded), teacher + [math.nan] * len(excluded)


def _stable_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest(), "little")


def build_targets(
    candidate_keys: torch.Tensor,
    candidate_labels: torch.Tensor,
    candidate_teacher: torch.Tensor,
    doc_keys: torch.Tensor,
    in_batch_negatives: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target matrix of queries over batch documents, from each query's full labeled candidate list.

    ``candidate_keys[B, K]`` / ``candidate_labels[B, K]`` / ``candidate_teacher[B, K]`` list each query's candidates
    (padded with ``PAD_KEY``); ``doc_keys[C]`` are the documents in the batch (``PAD_KEY`` for padding). Returns
    ``labels[B, C]``, ``mask[B, C]`` and ``teacher[B, C]``. A document listed several times takes its highest label.
    A key repeated in ``doc_keys`` is masked after its first occurrence. A document whose only label for query ``i``
    is :data:`EXCLUDED_LABEL` is masked for that query (label 0). Without in-batch negatives, a query only sees
    documents from its own candidate list.
    """
    match = candidate_keys.unsqueeze(-1) == doc_keys.view(1, 1, -1)  # [B, K, C]
    match &= (candidate_keys != PAD_KEY).unsqueeze(-1)
    listed = match.any(1)
    neg_inf = torch.full_like(candidate_labels, float("-inf"))
    labels = torch.where(match, candidate_labels.unsqueeze(-1), neg_inf.unsqueeze(-1)).amax(1)
    excluded = listed & torch.isneginf(labels)
    labels = torch.where(listed & ~excluded, labels, torch.zeros_like(labels))
    teacher_known = torch.where(torch.isnan(candidate_teacher), neg_inf, candidate_teacher)
    teacher = torch.where(match, teacher_known.unsqueeze(-1), neg_inf.unsqueeze(-1)).amax(1)
    teacher = torch.where(torch.isinf(teacher), torch.full_like(teacher, float("nan")), teacher)

    same = doc_keys.view(-1, 1) == doc_keys.view(1, -1)
    earlier_copy = torch.tril(same, diagonal=-1).any(1)
    valid_doc = (doc_keys != PAD_KEY) & ~earlier_copy
    mask = valid_doc.unsqueeze(0).expand_as(labels)
    mask = mask & ~excluded
    if not in_batch_negatives:
        mask = mask & listed
    return labels, mask.clone(), teacher


class RetrievalCollator:
    """Turn canonical rows into a bi-encoder training batch (see the module docstring for the outputs).

    Args:
        tokenizer: the model's tokenizer.
        corpus: document id -> text.
        group_size: documents sampled per query (positives + hard negatives); fewer when the list is shorter.
        positives_per_query: positives sampled per query (at most the number it has).
        query_max_length / document_max_length: truncation lengths; padding is dynamic (to the longest in the batch).
        query_prefix / document_prefix: strings put before queries / documents (e.g. ``"query: "``).
        in_batch_negatives: let each query see the other queries' documents as candidates.
        seed: sampling seed; the sample of a query depends only on ``(seed, epoch, query_id)``.
        student_noise: token noise on the tokenized queries and documents (a :class:`TokenNoise`, its config dict,
            or a kind name); the raw texts and targets stay clean. ``None``: no noise.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        corpus: Mapping[str, str],
        group_size: int = 8,
        positives_per_query: int = 1,
        query_max_length: int = 64,
        document_max_length: int = 256,
        query_prefix: str = "",
        document_prefix: str = "",
        in_batch_negatives: bool = True,
        seed: int = 42,
        pad_to_multiple_of: int | None = None,
        student_noise: TokenNoise | dict | str | None = None,
    ):
        if group_size < 1 or positives_per_query < 1:
            raise ValueError("group_size and positives_per_query must be >= 1")
        if positives_per_query > group_size:
            raise ValueError(f"positives_per_query ({positives_per_query}) > group_size ({group_size})")
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.group_size = group_size
        self.positives_per_query = positives_per_query
        self.query_max_length = query_max_length
        self.document_max_length = document_max_length
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.in_batch_negatives = in_batch_negatives
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.student_noise = TokenNoise.from_config(student_noise)
        if self.student_noise is not None:
            self.student_noise.validate_tokenizer(tokenizer)
        self.epoch = 0
        self.row_overrides: dict[str, Mapping[str, Any]] = {}
        self.query_candidates: dict[str, dict[str, list]] = {}  # pooled lists of queries with several rows
        self.overrides_version = 0  # how many times the overrides were set; a batch records the version it used

    @classmethod
    def for_model(cls, model: Any, corpus: Mapping[str, str], **kwargs: Any) -> RetrievalCollator:
        """A collator with the prefixes, max lengths and tokenizer of a :class:`~hf_robust_ir.modeling.BiEncoder`."""
        config = model.retrieval_config
        defaults = {
            "query_max_length": config.query_max_length,
            "document_max_length": config.document_max_length,
            "query_prefix": config.query_prefix,
            "document_prefix": config.document_prefix,
        }
        defaults.update({k: v for k, v in kwargs.items() if v is not None})
        from ..modeling.bi_encoder import input_length_limit

        encoder = getattr(model, "query_encoder", None)
        limit = input_length_limit(encoder, model.tokenizer) if encoder is not None else None
        for name in ("query_max_length", "document_max_length"):
            if limit is not None and defaults[name] is not None and defaults[name] > limit:
                logger.warning("%s=%d exceeds what the model reads; truncating at %d", name, defaults[name], limit)
                defaults[name] = limit
        return cls(model.tokenizer, corpus, **defaults)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_row_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the candidate lists of some queries: ``{query_id: {"doc_ids", "labels", "teacher_scores", ...}}``
        (see :class:`~hf_robust_ir.callbacks.HardNegativeRefreshCallback`). Batches record the version of the
        overrides they were built with and their source rows (``overrides_version``, ``source_rows``), so that a
        batch the data loader built ahead of the change is built again (:meth:`current`) before it trains."""
        for query_id, override in overrides.items():
            if not {"doc_ids", "labels"} <= set(override):
                raise ValueError(f"the override of query {query_id!r} needs doc_ids and labels")
        # columns an override leaves out are empty, not the row's own (which belong to the row's candidates)
        self.row_overrides = {
            query_id: {"teacher_scores": [], "label_source": [], **override} for query_id, override in overrides.items()
        }
        self.overrides_version += 1

    def set_query_candidates(self, rows: Any) -> int:
        """Pool the candidate lists of every query that has several ``rows`` (a ``datasets.Dataset`` or a list of
        row dicts); returns how many queries that is.

        Each row still samples its documents from its own list, but its target matrix reads the pooled list, so a
        document that another row of the same query labels relevant is relevant for this row too: it is a positive,
        not an in-batch negative, when it reaches the batch (as that row's positive, or as any other query's
        candidate). A document listed with several labels takes the highest. A document any row of the query
        excludes (:data:`~hf_robust_ir.data.schema.EXCLUDED_COLUMN`) is excluded for all of them unless one labels it
        relevant. Queries with one row need nothing and are not kept. A query whose candidates a refresh replaced
        (:meth:`set_row_overrides`) uses the refreshed list.
        """
        query_ids = list(rows["query_id"]) if hasattr(rows, "column_names") else [row["query_id"] for row in rows]
        repeated = {query_id for query_id, count in Counter(query_ids).items() if count > 1}
        pooled: dict[str, dict[str, list]] = {}
        if repeated:
            positions = [i for i, query_id in enumerate(query_ids) if query_id in repeated]
            selected = rows.select(positions) if hasattr(rows, "select") else [rows[i] for i in positions]
            for row in selected:
                entry = pooled.setdefault(row["query_id"], {"doc_ids": [], "labels": [], "teacher_scores": []})
                doc_ids, labels, teacher = _candidate_lists(row)
                entry["doc_ids"] += doc_ids
                entry["labels"] += labels
                entry["teacher_scores"] += teacher
            logger.info(
                "%d queries have several training rows: each row's targets read the candidates of all its query's rows",
                len(pooled),
            )
        self.query_candidates = pooled
        return len(pooled)

    def _target_candidates(self, row: Mapping[str, Any], overridden: bool) -> tuple[list, list, list]:
        """The candidate list a row's targets read: its own and the documents it excludes, followed by its query's
        other rows' (see :meth:`set_query_candidates`) unless a refresh replaced the query's list. Every listing of
        an excluded document that is not relevant reads :data:`EXCLUDED_LABEL`, so that a negative listing of it
        (label 0 wins over the sentinel in :func:`build_targets`) does not undo the exclusion."""
        doc_ids, labels, teacher = _candidate_lists(row)
        pooled = None if overridden else self.query_candidates.get(row["query_id"])
        if pooled is not None:
            doc_ids += pooled["doc_ids"]
            labels += pooled["labels"]
            teacher += pooled["teacher_scores"]
        excluded = {doc_id for doc_id, label in zip(doc_ids, labels) if label == EXCLUDED_LABEL}
        if excluded:
            labels = [EXCLUDED_LABEL if d in excluded and not y > 0 else y for d, y in zip(doc_ids, labels)]
        return doc_ids, labels, teacher

    def current(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` without its bookkeeping keys, built again from its rows when the overrides changed after it was
        built (the data loader prepares the next batch before the current one trains)."""
        version, rows = batch.pop("overrides_version", None), batch.pop("source_rows", None)
        if version is None or version == self.overrides_version:
            return batch
        fresh = self(rows)
        fresh.pop("overrides_version"), fresh.pop("source_rows")
        return fresh

    def sample(self, row: Mapping[str, Any]) -> list[int]:
        """Indices into the row's candidate list: positives first, then negatives, without repeats.

        A document listed more than once takes one slot (its first position); one listed as a positive anywhere
        in the row is a positive (as in the target matrix), never drawn as a negative; one the row excludes
        (:data:`~hf_robust_ir.data.schema.EXCLUDED_COLUMN`) and does not label relevant is never drawn."""
        labels = np.asarray(row["labels"], dtype=np.float32)
        rng = np.random.default_rng(_stable_seed(self.seed, self.epoch, row["query_id"]))
        first: dict[str, int] = {}
        for position, doc_id in enumerate(row["doc_ids"]):
            first.setdefault(doc_id, position)
        positive_docs = {doc_id for doc_id, label in zip(row["doc_ids"], labels) if label > 0}
        excluded = set(excluded_doc_ids(row))
        positives = np.array([i for d, i in first.items() if d in positive_docs], dtype=np.int64)
        negatives = np.array(
            [i for d, i in first.items() if d not in positive_docs and d not in excluded], dtype=np.int64
        )
        n_pos = min(self.positives_per_query, len(positives))
        chosen_pos = rng.choice(positives, size=n_pos, replace=False) if n_pos else positives[:0]
        n_neg = min(self.group_size - n_pos, len(negatives))
        chosen_neg = rng.choice(negatives, size=n_neg, replace=False) if n_neg else negatives[:0]
        return [int(i) for i in chosen_pos] + [int(i) for i in chosen_neg]

    def _tokenize(self, texts: list[str], prefix: str, max_length: int) -> dict[str, torch.Tensor]:
        texts = [prefix + t for t in texts] if prefix else texts
        noisy = self.student_noise is not None
        offsets = noisy and bool(prefix) and getattr(self.tokenizer, "is_fast", False)
        encoded = dict(
            self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=max_length,
                pad_to_multiple_of=self.pad_to_multiple_of,
                return_special_tokens_mask=noisy,
                return_offsets_mapping=offsets,
                return_tensors="pt",
            )
        )
        if noisy and prefix:  # the prefix is an instruction, not text: the noise leaves its tokens alone
            special = encoded["special_tokens_mask"].bool()
            if offsets:  # tokens that start inside the prefix
                in_prefix = encoded.pop("offset_mapping")[..., 0] < len(prefix)
            else:  # a slow tokenizer: the first tokens, as many as the prefix alone has
                length = len(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])
                content = encoded["attention_mask"].bool() & ~special
                in_prefix = content & (content.long().cumsum(1) <= length)
            encoded["special_tokens_mask"] = (special | in_prefix).long()
        return encoded

    def _add_noise(
        self, encoded: dict[str, torch.Tensor], rows: Sequence[Mapping[str, Any]], stream: str
    ) -> dict[str, torch.Tensor]:
        """The student's noisy version of tokenized inputs; ``special_tokens_mask`` is used up, never returned."""
        special = encoded.pop("special_tokens_mask")
        noise = self.student_noise
        seed = _stable_seed(noise.seed, self.epoch, tuple(row["query_id"] for row in rows), stream)
        ids = encoded["input_ids"]
        attention = encoded.get("attention_mask", torch.ones_like(ids))
        noisy = noise.apply(
            ids, attention, special, self.tokenizer, torch.Generator().manual_seed(seed), self.pad_to_multiple_of
        )
        width = noisy["input_ids"].shape[1]
        # other per-token inputs (token_type_ids: one segment, so constant along a row) follow a shortened width
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        out = {k: (v[:, v.shape[1] - width :] if left else v[:, :width]) for k, v in encoded.items()}
        out["input_ids"] = noisy["input_ids"]
        if "attention_mask" in encoded:
            out["attention_mask"] = noisy["attention_mask"]
        return out

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        source_rows = list(rows)
        overrides = getattr(self, "row_overrides", None)
        if overrides:
            rows = [{**row, **overrides[row["query_id"]]} if row["query_id"] in overrides else row for row in rows]
        doc_ids: list[str] = []
        seen: set[str] = set()
        for row in rows:
            check_candidate_lists(row, f"training row of query {row.get('query_id')!r}", None)
        targets = [self._target_candidates(row, bool(overrides) and row["query_id"] in overrides) for row in rows]
        longest = max(len(ids) for ids, _, _ in targets)
        candidate_keys = torch.full((len(rows), longest), PAD_KEY, dtype=torch.long)
        candidate_labels = torch.zeros((len(rows), longest))
        candidate_teacher = torch.full((len(rows), longest), float("nan"))
        for i, (row, (target_ids, target_labels, target_teacher)) in enumerate(zip(rows, targets)):
            for j in self.sample(row):
                doc_id = row["doc_ids"][j]
                if doc_id not in seen:
                    seen.add(doc_id)
                    doc_ids.append(doc_id)
            n = len(target_ids)
            candidate_keys[i, :n] = torch.tensor([document_key(d) for d in target_ids], dtype=torch.long)
            candidate_labels[i, :n] = torch.tensor(target_labels, dtype=torch.float)
            candidate_teacher[i, :n] = torch.tensor(target_teacher, dtype=torch.float)
        doc_keys = torch.tensor([document_key(d) for d in doc_ids], dtype=torch.long)
        labels, mask, teacher = build_targets(
            candidate_keys, candidate_labels, candidate_teacher, doc_keys, self.in_batch_negatives
        )
        try:
            doc_texts = [self.corpus[d] for d in doc_ids]
        except KeyError as err:
            raise KeyError(f"document id {err.args[0]!r} of a training row is not in the corpus") from None
        query = self._tokenize([row["query"] for row in rows], self.query_prefix, self.query_max_length)
        document = self._tokenize(doc_texts, self.document_prefix, self.document_max_length)
        if self.student_noise is not None:
            query = self._add_noise(query, rows, "query")
            document = self._add_noise(document, rows, "document")
        return {
            "query": query,
            "document": document,
            "labels": labels,
            "mask": mask,
            "teacher": teacher,
            "doc_keys": doc_keys,
            "candidate_keys": candidate_keys,
            "candidate_labels": candidate_labels,
            "candidate_teacher": candidate_teacher,
            "doc_ids": doc_ids,
            "query_texts": [row["query"] for row in rows],  # raw texts, for a guide model with its own tokenizer
            "document_texts": doc_texts,
            "overrides_version": self.overrides_version,
            "source_rows": source_rows,
        }
