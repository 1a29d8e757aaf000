"""Token-level input noise for a noisy student (Noisy Self-Training, NST; arXiv 2311.15563).

The student sees perturbed inputs while its targets (labels, teacher scores, a guide model's view) come from clean
text, which regularizes it against the teacher's mistakes. Noise is applied to tokenized batches and touches only
*eligible* positions: real tokens (``attention_mask = 1``) that are not special, i.e. neither marked in
``special_tokens_mask`` nor one of ``tokenizer.all_special_ids`` (so ``[CLS]``, ``[SEP]``, padding, and a literal
``[MASK]`` or ``[UNK]`` in the text never move, change or disappear); the collator marks a query or document prefix
(``"query: "``, an instruction rather than text) as fixed too. Each eligible token is hit independently with
probability ``p``:

- ``shuffle``: the hit tokens (a Binomial(n, p) subset of a row's n eligible tokens) are permuted at random among
  their own positions; every other position is unchanged;
- ``delete``: the hit tokens are removed; the rest (special tokens included) are packed left in order, re-padded with
  ``pad_token_id``, the attention mask follows, and trailing all-padding columns are trimmed (the batch never grows).
  A row that would lose *all* its eligible tokens keeps the one with the highest draw (a uniformly random one);
- ``replace``: the hit tokens become a token id drawn uniformly from the vocabulary minus the special ids;
- ``mask``: the hit tokens become ``tokenizer.mask_token_id``;
- ``sequential``: shuffle, then delete, then replace, then mask, each with probability ``p``.

All randomness comes from the ``torch.Generator`` passed to :meth:`TokenNoise.apply`, so a seeded generator gives the
same noise on every run (the collator seeds it from the noise seed, the epoch and the batch's query ids).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

KINDS = ("shuffle", "delete", "replace", "mask", "sequential")


@dataclass(frozen=True)
class TokenNoise:
    """Token-level noise on the student's inputs (see the module docstring for the kinds and the rules).

    Args:
        kind: ``"shuffle"`` (default), ``"delete"``, ``"replace"``, ``"mask"`` or ``"sequential"`` (all four in turn).
        p: probability that an eligible token is hit, in ``[0, 1]``; ``0`` leaves inputs unchanged.
        seed: the noise seed (the collator combines it with the epoch and the batch's query ids).
    """

    kind: str = "shuffle"
    p: float = 0.1
    seed: int = 0

    citation = "Noisy Self-Training with Synthetic Queries for Dense Retrieval (arXiv 2311.15563)"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown token noise kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        try:
            p = float(self.p)
        except (TypeError, ValueError):
            raise ValueError(f"token noise p must be a number in [0, 1], got {self.p!r}") from None
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise ValueError(f"token noise p must be in [0, 1], got {self.p!r}")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "seed", int(self.seed))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "p": self.p, "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict[str, Any] | str | TokenNoise | None) -> TokenNoise | None:
        """A ``TokenNoise`` from ``{"kind": ..., "p": ..., "seed": ...}`` (any key optional), its JSON text, a kind
        name (``"mask"``), or an instance (returned as is); ``None`` (or an empty string) gives ``None``."""
        if config is None or isinstance(config, TokenNoise):
            return config
        if isinstance(config, str):
            text = config.strip()
            if not text:
                return None
            if not text.startswith("{"):
                return cls(kind=text)
            config = json.loads(text)
        if not isinstance(config, dict):
            raise TypeError(f"token noise config must be a dict, a kind name or None, got {type(config).__name__}")
        unknown = set(config) - {"kind", "p", "seed"}
        if unknown:
            raise ValueError(f"unknown token noise option(s) {sorted(unknown)}; expected kind, p, seed")
        return cls(**config)

    def validate_tokenizer(self, tokenizer: Any) -> None:
        """Raise ``ValueError`` when the tokenizer cannot serve this noise (masking needs a mask token)."""
        if self.kind in ("mask", "sequential") and getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError(f"token noise {self.kind!r} needs a tokenizer with a mask token; this one has none")

    # ------------------------------------------------------------------ applying
    def apply(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        special_tokens_mask: torch.Tensor,
        tokenizer: Any,
        generator: torch.Generator,
        pad_to_multiple_of: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Noisy ``input_ids`` and their ``attention_mask`` (both ``[B, L']`` with ``L' <= L``; ``L' < L`` only after
        deletion). ``pad_to_multiple_of`` keeps a deletion-shortened width a multiple of it."""
        if input_ids.shape != attention_mask.shape or input_ids.shape != special_tokens_mask.shape:
            raise ValueError("input_ids, attention_mask and special_tokens_mask must have the same shape")
        if self.p == 0.0 or input_ids.numel() == 0:
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        self.validate_tokenizer(tokenizer)
        special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype)
        ids, attention = input_ids.clone(), attention_mask.clone()
        fixed = special_tokens_mask.bool() | torch.isin(ids, special_ids)
        steps = ("shuffle", "delete", "replace", "mask") if self.kind == "sequential" else (self.kind,)
        for step in steps:
            eligible = attention.bool() & ~fixed
            if step == "shuffle":
                ids = self._shuffle(ids, eligible, generator)
            elif step == "delete":
                ids, attention, fixed = self._delete(
                    ids, attention, fixed, eligible, tokenizer, generator, pad_to_multiple_of
                )
            elif step == "replace":
                ids = self._replace(ids, eligible, special_ids, len(tokenizer), generator)
            else:
                hit = eligible & (torch.rand(ids.shape, generator=generator) < self.p)
                ids = ids.masked_fill(hit, tokenizer.mask_token_id)
        return {"input_ids": ids, "attention_mask": attention}

    def _shuffle(self, ids: torch.Tensor, eligible: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Permute each row's hit tokens among their positions: sorting hit positions by position and, separately, by
        i.i.d. uniform keys pairs every hit position with a uniformly random hit token; the rest map to themselves."""
        hit = eligible & (torch.rand(ids.shape, generator=generator) < self.p)
        positions = torch.arange(ids.shape[1], dtype=torch.float64).expand(ids.shape)
        keys = torch.rand(ids.shape, generator=generator, dtype=torch.float64)
        slots = torch.argsort(torch.where(hit, positions, positions + ids.shape[1]), dim=1, stable=True)
        sources = torch.argsort(torch.where(hit, keys, positions + 2.0), dim=1, stable=True)
        return ids.scatter(1, slots, ids.gather(1, sources))

    def _delete(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        fixed: torch.Tensor,
        eligible: torch.Tensor,
        tokenizer: Any,
        generator: torch.Generator,
        pad_to_multiple_of: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        draws = torch.rand(ids.shape, generator=generator)
        hit = eligible & (draws < self.p)
        emptied = eligible.any(1) & ~(eligible & ~hit).any(1)
        if emptied.any():  # keep the eligible token with the highest draw in rows that would lose them all
            survivor = torch.where(eligible, draws, torch.full_like(draws, -1.0)).argmax(1)
            hit[emptied, survivor[emptied]] = False
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        left = getattr(tokenizer, "padding_side", "right") == "left"  # then pack to the right, trim on the left
        tensors = [t.flip(1) if left else t for t in (ids, attention, fixed, attention.bool() & ~hit)]
        packed = _trim(*repack(*tensors, pad_id), width=ids.shape[1], pad_to_multiple_of=pad_to_multiple_of)
        return tuple(t.flip(1) if left else t for t in packed)

    def _replace(
        self,
        ids: torch.Tensor,
        eligible: torch.Tensor,
        special_ids: torch.Tensor,
        vocab_size: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        vocabulary = torch.arange(vocab_size, dtype=ids.dtype)
        allowed = vocabulary[~torch.isin(vocabulary, special_ids)]
        if allowed.numel() == 0:
            raise ValueError("token noise 'replace' needs a vocabulary with non-special tokens")
        hit = eligible & (torch.rand(ids.shape, generator=generator) < self.p)
        random_ids = allowed[torch.randint(allowed.numel(), ids.shape, generator=generator)]
        return torch.where(hit, random_ids, ids)


def repack(
    ids: torch.Tensor, attention: torch.Tensor, fixed: torch.Tensor, keep: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack each row's kept tokens to the left, in order, and pad the rest with ``pad_id`` (same width ``L``).

    Returns the packed ids, the new attention mask (1 on the kept tokens) and ``fixed`` moved with its tokens.
    """
    rows, cols = keep.nonzero(as_tuple=True)
    slots = (keep.long().cumsum(1) - 1)[rows, cols]
    packed = torch.full_like(ids, pad_id)
    packed[rows, slots] = ids[rows, cols]
    packed_fixed = torch.zeros_like(fixed)
    packed_fixed[rows, slots] = fixed[rows, cols]
    new_attention = (torch.arange(ids.shape[1]).unsqueeze(0) < keep.sum(1, keepdim=True)).to(attention.dtype)
    return packed, new_attention, packed_fixed


def _trim(
    ids: torch.Tensor, attention: torch.Tensor, fixed: torch.Tensor, width: int, pad_to_multiple_of: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop trailing all-padding columns; the width stays a multiple of ``pad_to_multiple_of``, at most ``width``."""
    longest = int(attention.sum(1).max().item()) if attention.numel() else 0
    if pad_to_multiple_of:
        longest = math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of
    longest = min(max(longest, 1), width)
    return ids[:, :longest], attention[:, :longest], fixed[:, :longest]
