"""Pooling of token embeddings into one vector per text: mean, CLS or last token."""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "cls", "lasttoken")


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``token_embeddings[N, T, H]`` under ``attention_mask[N, T]`` into ``[N, H]``.

    - ``mean``: average of the non-padding tokens (sentence-transformers' default);
    - ``cls``: the first non-padding token (the first token of a right-padded batch);
    - ``lasttoken``: the last non-padding token, for left- or right-padded batches (decoder embedders).

    As in sentence-transformers, whichever side the padding is on; a row without any token pools to zeros
    (``cls``: its first position).
    """
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
        return (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    rows = torch.arange(token_embeddings.shape[0], device=token_embeddings.device)
    if mode == "cls":
        # position of the first 1 in each row: a left-padded batch starts with padding
        return token_embeddings[rows, attention_mask.long().argmax(1)]
    if mode == "lasttoken":
        # position of the last 1 in each row, whichever side the padding is on
        length = attention_mask.shape[1]
        last = length - 1 - attention_mask.flip(1).long().argmax(1)
        present = attention_mask.any(1).unsqueeze(-1).to(token_embeddings.dtype)
        return token_embeddings[rows, last] * present
    raise ValueError(f"unknown pooling mode {mode!r}; choose one of {POOLING_MODES}")


# sentence-transformers' 1_Pooling/config.json flag for each mode
SENTENCE_TRANSFORMERS_POOLING_FLAGS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "lasttoken": "pooling_mode_lasttoken",
}


def pooling_mode_from_sentence_transformers(config: dict) -> str:
    """Read the pooling mode from a sentence-transformers ``1_Pooling/config.json``: ``pooling_mode`` (a mode, or a
    list of one), or the older ``pooling_mode_*`` flags. Several modes (their embeddings concatenated) or a mode this
    library does not pool with (max, weighted mean, mean over the square root of the length) are refused: loading
    them as one of ``POOLING_MODES`` would give other embeddings."""
    mode = config.get("pooling_mode")
    if isinstance(mode, (list, tuple)) and len(mode) == 1:
        mode = mode[0]
    if mode is not None:
        if isinstance(mode, str) and mode in POOLING_MODES:
            return mode
        raise ValueError(f"unsupported sentence-transformers pooling mode {mode!r}; supported: {POOLING_MODES}")
    flagged = sorted(key for key, value in config.items() if key.startswith("pooling_mode_") and value is True)
    supported = {flag: name for name, flag in SENTENCE_TRANSFORMERS_POOLING_FLAGS.items()}
    if len(flagged) == 1 and flagged[0] in supported:
        return supported[flagged[0]]
    if not flagged:
        raise ValueError(f"unsupported sentence-transformers pooling config (no pooling mode set): {config}")
    raise ValueError(
        f"unsupported sentence-transformers pooling config: {', '.join(flagged)} "
        f"({'several modes concatenated' if len(flagged) > 1 else 'a mode this library does not pool with'}); "
        f"supported: one of {', '.join(supported)}"
    )
