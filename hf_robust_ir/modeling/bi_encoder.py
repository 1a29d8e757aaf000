"""BiEncoder: a dense retriever made of one shared (or two separate) transformer towers, a pooling and a temperature.

A saved BiEncoder folder is at once:

- a ``transformers`` model folder (``config.json`` + ``model.safetensors`` + tokenizer at the top level), so
  ``AutoModel.from_pretrained(folder)`` loads the encoder;
- a ``sentence-transformers`` folder (``modules.json``, ``1_Pooling``, ``2_Normalize``, prompts for the query and
  document prefixes), so ``SentenceTransformer(folder)`` gives the same embeddings;
- ``hf_robust_ir_config.json`` with the rest (temperature, max lengths, towers), read back by ``from_pretrained``.

With separate towers the two encoders go to ``query_encoder/`` and ``document_encoder/``, each a full folder as above.
With a LoRA adapter (peft) only the adapter is saved, next to the name of its base model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from ..json_files import read_json_file
from .compiled_inference import CompiledTower, should_compile
from .pooling import POOLING_MODES, SENTENCE_TRANSFORMERS_POOLING_FLAGS, pool, pooling_mode_from_sentence_transformers

CONFIG_NAME = "hf_robust_ir_config.json"
QUERY_TOWER, DOCUMENT_TOWER = "query_encoder", "document_encoder"
KINDS = ("query", "document")
PLURALS = {"query": "queries", "document": "documents"}
"""The word each kind is counted in (progress bars)."""
# the sentence-transformers modules a BiEncoder reproduces; any other (Dense, LayerNorm, ...) changes the vectors
SENTENCE_TRANSFORMERS_MODULES = ("Transformer", "Pooling", "Normalize")

logger = logging.getLogger(__name__)


@dataclass
class BiEncoderConfig:
    """How a BiEncoder turns texts into vectors and vectors into scores (``score = q·d / temperature``)."""

    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = ""
    document_prefix: str = ""
    temperature: float = 0.05
    separate_towers: bool = False
    query_max_length: int = 256
    document_max_length: int = 256
    base_model: str | None = None

    def __post_init__(self):
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("query_max_length", "document_max_length"):
            _check_max_length(getattr(self, name), name)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> BiEncoderConfig:
        data = read_json_file(path)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _check_max_length(value: Any, name: str = "max_length") -> None:
    """A ``ValueError`` for a max length that is not a whole number >= 1 (0 would truncate nothing)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def absolute_if_local(name: str) -> str:
    """``name`` as an absolute path when it is a local folder (a Hub id as it is): a model keeps the path it was
    loaded from, and a LoRA adapter saved from it names that path as its base model, which must not depend on the
    working directory."""
    return os.path.abspath(name) if Path(name).is_dir() else name


def absolute_adapter_bases(model: nn.Module) -> None:
    """Name each adapter's base model by its absolute path where an adapter saved earlier names a relative folder."""
    for config in getattr(model, "peft_config", {}).values():
        if config.base_model_name_or_path:
            config.base_model_name_or_path = absolute_if_local(config.base_model_name_or_path)


@contextlib.contextmanager
def model_card_kept(folder: Path) -> Iterator[None]:
    """Leave ``folder/README.md`` as it was across a save. peft's ``save_pretrained`` of an adapter writes a
    placeholder card where there is none, and rewrites the metadata of one that is there (``base_model`` as the
    adapter's local base path, peft's tags), over the card the library writes (``ModelCardCallback``,
    :func:`~hf_robust_ir.hub.push_to_hub`)."""
    card = folder / "README.md"
    before = card.read_bytes() if card.is_file() else None
    try:
        yield
    finally:
        if before is None:
            card.unlink(missing_ok=True)
        else:
            card.write_bytes(before)


def _load_transformer(path: str, trust_remote_code: bool, torch_dtype: Any = None) -> nn.Module:
    path = absolute_if_local(path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        # BERT's pooler is never used for retrieval, and an unused parameter breaks DDP.
        return AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
    except TypeError:
        return AutoModel.from_pretrained(path, **kwargs)


def adapter_base_folder(folder: Path, base_model: str | None, tower: str | None = None) -> str:
    """The local folder of the base model under the peft adapter in ``folder``: the one its ``adapter_config.json``
    names, else ``base_model`` (a local copy of it); a ``FileNotFoundError`` saying so when neither is a folder.

    ``tower``: the tower the adapter is of (``query_encoder`` or ``document_encoder``); when ``base_model`` is a
    BiEncoder saved with separate towers, the adapter's base is that model's tower of the same name (an adapter pushed
    to the Hub names its base by the repository's id, which holds both towers)."""
    base = read_json_file(folder / "adapter_config.json").get("base_model_name_or_path") or base_model
    if (not base or not Path(base).exists()) and base_model and Path(base_model).exists():
        base = base_model  # the adapter names a Hub id; its local copy was given (hf_robust_ir.hub.from_pretrained)
        if tower and _holds_model(Path(base_model) / tower):
            base = str(Path(base_model) / tower)
    if not base or not Path(base).exists():
        raise FileNotFoundError(
            f"{folder}: the adapter's base model {base!r} is not a local folder; pass its local copy as "
            "base_model=<folder> (or load a merged model: merge_lora() before save_pretrained)"
        )
    return base


def _load_tower(
    folder: Path, trust_remote_code: bool, torch_dtype: Any, base_model: str | None, tower: str | None = None
) -> nn.Module:
    """A transformer folder, or a peft adapter folder on top of its (local) base model (the adapter trainable, as it
    was saved, so training can go on from it); ``tower``: see :func:`adapter_base_folder`."""
    if not (folder / "adapter_config.json").exists():
        return _load_transformer(str(folder), trust_remote_code, torch_dtype)
    from peft import PeftModel

    base_folder = adapter_base_folder(folder, base_model, tower)
    base_encoder = _load_transformer(base_folder, trust_remote_code, torch_dtype)
    encoder = PeftModel.from_pretrained(base_encoder, str(folder), is_trainable=True)
    absolute_adapter_bases(encoder)
    return encoder


def check_lora_can_be_added(holds_adapter: bool, merged_in_memory: bool) -> None:
    """A ``ValueError`` for adding a LoRA adapter to a model that holds one, or whose adapter was merged in memory
    only: an adapter is saved without its base weights, naming the folder they were loaded from, which lacks the
    merged ones (the reloaded model would silently lose them)."""
    if holds_adapter:
        raise ValueError(
            "the model already holds a LoRA adapter, which trains on as it is; to start a new adapter on top of "
            "it, call merge_lora(), save_pretrained(folder) and add the new adapter to the model loaded from folder"
        )
    if merged_in_memory:
        raise ValueError(
            "the model's adapter was merged in memory only, and a new adapter is saved naming the folder of its base "
            "weights: save_pretrained(folder) first and add the new adapter to the model loaded from folder"
        )


def position_limit(encoder: nn.Module) -> int | None:
    """The positions the model's embeddings hold, less the offset of those (RoBERTa, MPNet) that number positions
    from ``padding_idx + 1``; None for a model without ``max_position_embeddings``."""
    positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
    if not positions:
        return None
    for name, module in encoder.named_modules():
        module = getattr(module, "base_layer", module)  # under a LoRA adapter
        if name.endswith("position_embeddings") and isinstance(module, nn.Embedding):
            if module.num_embeddings == positions and module.padding_idx is not None:
                return positions - module.padding_idx - 1
            break
    return positions


def _tokenizer_limit(tokenizer: PreTrainedTokenizerBase) -> int | None:
    return tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None


def input_length_limit(encoder: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The most tokens the model can read: its position embeddings, or the tokenizer's limit for a model without
    them; None if unbounded. Where the model has positions the tokenizer's limit is a default, not a bound: a
    sentence-transformers 6 folder keeps its ``max_seq_length`` there, and ``st.max_seq_length`` may go past it."""
    return position_limit(encoder) or _tokenizer_limit(tokenizer)


def _default_read_length(encoder: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """How far sentence-transformers reads a folder without ``max_seq_length``: the tokenizer's limit, capped at the
    model's positions."""
    return min((x for x in (position_limit(encoder), _tokenizer_limit(tokenizer)) if x), default=None)


def _fit_max_lengths(config: BiEncoderConfig, encoder: nn.Module, tokenizer: PreTrainedTokenizerBase):
    """Cap the max lengths at what the model can read (see :func:`input_length_limit`)."""
    limit = input_length_limit(encoder, tokenizer)
    if limit is None:
        return config
    return dataclasses.replace(
        config,
        query_max_length=min(config.query_max_length, limit),
        document_max_length=min(config.document_max_length, limit),
    )


def _scores_by_cosine(path: Path) -> bool:
    """Whether sentence-transformers scores this folder's embeddings by cosine: its ``similarity_fn_name``, cosine
    when unset (folders saved before the setting existed, e.g. the paraphrase-* models, which have no Normalize
    module). A BiEncoder then normalizes, so that it scores and trains by cosine as well (``q·d / τ`` of raw
    embeddings would give logits in the hundreds)."""
    st_config = path / "config_sentence_transformers.json"
    settings = read_json_file(st_config) if st_config.exists() else {}
    return settings.get("similarity_fn_name") in (None, "cosine")


def _check_lower_case(path: Path, tokenizer: Any) -> None:
    """sentence-transformers lowercases the texts of a folder saved with ``do_lower_case: true`` before tokenizing; a
    BiEncoder does not, so such a folder loads only when its tokenizer lowercases by itself (an uncased BERT's)."""
    bert_config = path / "sentence_bert_config.json"
    if not bert_config.exists() or not read_json_file(bert_config).get("do_lower_case"):
        return
    if tokenizer("Label Noise")["input_ids"] != tokenizer("label noise")["input_ids"]:
        raise ValueError(
            f"{path}: do_lower_case=true in sentence_bert_config.json (sentence-transformers lowercases the texts) "
            "with a tokenizer that keeps case is not supported; loading would give other embeddings"
        )


def _config_from_sentence_transformers(path: Path) -> dict[str, Any]:
    """Pooling, normalization, prefixes and max length of a sentence-transformers folder (empty if it is not one).

    A ``ValueError`` for a module or pooling setting a BiEncoder cannot reproduce (``Dense``, ``include_prompt``)."""
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return {}
    found: dict[str, Any] = {}
    modules = read_json_file(modules_file, list)
    types = [m.get("type", "") for m in modules]
    unsupported = [t for t in types if t.rsplit(".", 1)[-1] not in SENTENCE_TRANSFORMERS_MODULES]
    if unsupported:
        raise ValueError(
            f"{path}: sentence-transformers module(s) {unsupported} are not supported (a BiEncoder is "
            f"{' + '.join(SENTENCE_TRANSFORMERS_MODULES)}); loading without them would give other embeddings"
        )
    found["normalize"] = any(t.endswith("Normalize") for t in types) or _scores_by_cosine(path)
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            pooling_config = path / module["path"] / "config.json"
            if pooling_config.exists():
                pooling_settings = read_json_file(pooling_config)
                if pooling_settings.get("include_prompt") is False:
                    raise ValueError(
                        f"{path}: pooling setting include_prompt=false (prompt tokens left out of the pooling) is "
                        "not supported; loading would give other embeddings"
                    )
                try:
                    found["pooling"] = pooling_mode_from_sentence_transformers(pooling_settings)
                except ValueError as err:
                    raise ValueError(f"{pooling_config}: {err}") from None
    bert_config = path / "sentence_bert_config.json"
    if bert_config.exists():
        max_length = read_json_file(bert_config).get("max_seq_length")
        if max_length:
            found["query_max_length"] = found["document_max_length"] = int(max_length)
    st_config = path / "config_sentence_transformers.json"
    if st_config.exists():
        prompts = read_json_file(st_config).get("prompts") or {}
        found["query_prefix"] = prompts.get("query", "")
        found["document_prefix"] = prompts.get("document", prompts.get("passage", ""))
    return found


def _holds_model(folder: Path) -> bool:
    """Whether ``folder`` holds a transformers model (``config.json``) or a LoRA adapter (``adapter_config.json``)."""
    return any((folder / name).is_file() for name in ("config.json", "adapter_config.json"))


def _check_kind(kind: str) -> None:
    """A ``ValueError`` for a kind other than "query" or "document" (a typo would get the document prefix and tower)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def check_text_list(texts: Any) -> None:
    """A ``TypeError`` for one str given as the texts (it would be read as one text per character)."""
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got a str: wrap one text in a list")


class BiEncoder(nn.Module):
    """Dense retriever: ``q = pool(E_q(prefix_q + query))``, ``d = pool(E_d(prefix_d + doc))``, ``s = q·d / τ``.

    ``forward(query=..., document=...)`` takes tokenized batches and returns their embeddings; losses live outside the
    model (see ``hf_robust_ir.losses``). ``encode_queries`` / ``encode_documents`` embed raw texts for search.
    """

    def __init__(
        self,
        query_encoder: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: BiEncoderConfig | None = None,
        document_encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.retrieval_config = config or BiEncoderConfig()
        self.query_encoder = query_encoder
        if self.retrieval_config.separate_towers:
            if document_encoder is None:
                raise ValueError("separate_towers=True needs a document_encoder")
            self.document_encoder = document_encoder
        elif document_encoder is not None:
            raise ValueError("a document_encoder was given but separate_towers is False")
        self.tokenizer = tokenizer
        self.forward_chunk_size: int | None = None  # see embed()
        self._compiled_towers: dict[str, CompiledTower] = {}  # see encode(compile=...)
        self._warned_one_max_seq_length = False  # see save_pretrained (once, not at every checkpoint)
        self._merged_in_memory = False  # see add_lora

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        trust_remote_code: bool = False,
        torch_dtype: Any = None,
        **overrides: Any,
    ) -> BiEncoder:
        """Load a BiEncoder folder, a sentence-transformers folder, a plain transformers folder or a LoRA adapter.

        Keyword ``overrides`` replace fields of :class:`BiEncoderConfig` (``pooling="cls"``, ``temperature=0.02``, ...).
        Setting ``separate_towers=True`` on a shared model starts two towers from the same weights.
        """
        folder = Path(path)
        if not folder.exists():
            raise FileNotFoundError(
                f"model folder {str(path)!r} does not exist (Hub names need network access; pass a local folder)"
            )
        unknown = set(overrides) - {f.name for f in dataclasses.fields(BiEncoderConfig)}
        if unknown:
            raise TypeError(f"unknown BiEncoder option(s): {sorted(unknown)}")
        if (folder / CONFIG_NAME).exists():
            settings = dataclasses.asdict(BiEncoderConfig.from_json_file(folder / CONFIG_NAME))
        else:
            settings = _config_from_sentence_transformers(folder)
        # the towers of query_encoder/ and document_encoder/, unless the folder was saved since as one shared model (a
        # save does not delete the tower folders of an earlier one)
        saved_towers = (folder / QUERY_TOWER).is_dir() and (settings.get("separate_towers") or not _holds_model(folder))
        settings.update(overrides)
        # a sentence-transformers folder without max_seq_length (version 6 keeps it in the tokenizer) reads as far as
        # the model and tokenizer allow, as sentence-transformers does, for each length not given
        lengths_from_model = (
            {"query_max_length", "document_max_length"} - set(settings) if (folder / "modules.json").exists() else set()
        )
        settings.setdefault("base_model", absolute_if_local(str(path)))
        config = BiEncoderConfig(**settings)

        if saved_towers:
            query_folder, document_folder = folder / QUERY_TOWER, folder / DOCUMENT_TOWER
        else:
            query_folder = document_folder = folder
        for tower in {query_folder, document_folder} if config.separate_towers else {query_folder}:
            if not _holds_model(tower):
                raise FileNotFoundError(
                    f"{str(tower)!r} is not a model folder: it holds neither config.json (a transformers or "
                    "sentence-transformers model) nor adapter_config.json (a LoRA adapter)"
                )
        tokenizer = AutoTokenizer.from_pretrained(str(query_folder), trust_remote_code=trust_remote_code)
        if not (folder / CONFIG_NAME).exists():
            _check_lower_case(folder, tokenizer)
        towers = (QUERY_TOWER, DOCUMENT_TOWER) if saved_towers else (None, None)
        query_encoder = _load_tower(query_folder, trust_remote_code, torch_dtype, config.base_model, towers[0])
        document_encoder = None
        if config.separate_towers:
            document_encoder = _load_tower(
                document_folder, trust_remote_code, torch_dtype, config.base_model, towers[1]
            )
        limit = _default_read_length(query_encoder, tokenizer) if lengths_from_model else None
        if limit is not None:
            config = dataclasses.replace(config, **dict.fromkeys(lengths_from_model, limit))
        return cls(query_encoder, tokenizer, _fit_max_lengths(config, query_encoder, tokenizer), document_encoder)

    def save_pretrained(self, path: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write a folder that loads in ``transformers``, ``sentence-transformers`` and :meth:`from_pretrained`."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.retrieval_config
        if config.separate_towers:
            self._save_tower(self.query_encoder, folder / QUERY_TOWER, config.query_max_length, safe_serialization)
            self._save_tower(
                self.document_encoder, folder / DOCUMENT_TOWER, config.document_max_length, safe_serialization
            )
        else:
            if config.query_max_length != config.document_max_length and not self._warned_one_max_seq_length:
                self._warned_one_max_seq_length = True
                logger.warning(
                    "query_max_length=%d differs from document_max_length=%d; sentence-transformers keeps one "
                    "max_seq_length (saved as %d), so it truncates queries at %d tokens unless "
                    "`model.max_seq_length = %d` is set before encoding queries",
                    config.query_max_length,
                    config.document_max_length,
                    config.document_max_length,
                    config.document_max_length,
                    config.query_max_length,
                )
            self._save_tower(self.query_encoder, folder, config.document_max_length, safe_serialization)
        (folder / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    def _save_tower(self, encoder: nn.Module, folder: Path, max_length: int, safe_serialization: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with model_card_kept(folder):
            encoder.save_pretrained(str(folder), safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(str(folder))
        config = self.retrieval_config
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if config.normalize:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
            (folder / "2_Normalize").mkdir(exist_ok=True)
        (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2) + "\n"
        )
        hidden = getattr(getattr(encoder, "config", None), "hidden_size", None)
        pooling = {"word_embedding_dimension": hidden, "pooling_mode": config.pooling, "include_prompt": True}
        pooling.update({flag: mode == config.pooling for mode, flag in SENTENCE_TRANSFORMERS_POOLING_FLAGS.items()})
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
        prompts = {"query": config.query_prefix, "document": config.document_prefix}
        st_config = {
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if config.normalize else "dot",
        }
        (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")

    # ---------------------------------------------------------------- LoRA (peft)
    @property
    def holds_lora(self) -> bool:
        """Whether the model holds a LoRA adapter (peft), added or loaded, and not merged."""
        from peft import PeftModel

        return isinstance(self.query_encoder, PeftModel)

    def add_lora(self, lora_config: Any) -> BiEncoder:
        """Wrap the tower(s) with a peft adapter (e.g. ``peft.LoraConfig(r=8, target_modules=["query", "value"])``).

        Each tower gets its own copy of ``lora_config`` (peft writes the tower's base model into it). A model that
        already holds an adapter (a loaded adapter folder trains on as it is) is refused, and so is one merged in
        memory: ``merge_lora()``, save and load the merged model first (see :func:`check_lora_can_be_added`).
        """
        from peft import get_peft_model

        check_lora_can_be_added(self.holds_lora, self._merged_in_memory)
        self.query_encoder = get_peft_model(self.query_encoder, copy.deepcopy(lora_config))
        if self.retrieval_config.separate_towers:
            self.document_encoder = get_peft_model(self.document_encoder, copy.deepcopy(lora_config))
        return self

    def merge_lora(self) -> BiEncoder:
        """Fold the adapter into the base weights (``merge_and_unload``); the result saves as a full model, which
        loads in ``transformers`` and ``sentence-transformers`` without ``peft``."""
        if not self.holds_lora:
            raise ValueError("the model holds no LoRA adapter to merge")
        self.query_encoder = self.query_encoder.merge_and_unload()
        if self.retrieval_config.separate_towers:
            self.document_encoder = self.document_encoder.merge_and_unload()
        self._merged_in_memory = True
        return self

    # ---------------------------------------------------------------- forward
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tower(self, kind: str) -> nn.Module:
        _check_kind(kind)
        if kind == "query" or not self.retrieval_config.separate_towers:
            return self.query_encoder
        return self.document_encoder

    def embed(self, features: dict[str, torch.Tensor], kind: str, tower: Any = None) -> torch.Tensor:
        """Pooled (and, if configured, L2-normalized) embeddings of a tokenized batch.

        With ``forward_chunk_size`` set, a larger batch goes through the tower in chunks of at most that many
        sequences, grouped by length (longest first), each with its trailing all-padding columns dropped; the
        embeddings come back in batch order. The result is the same (up to float rounding) with less padding and
        smaller activation tensors: on CPU, chunks of 16 make a training step over 64 documents faster.
        ``tower`` replaces the tower of ``kind`` (``encode`` passes its compiled copy).
        """
        inputs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        chunk, size = self.forward_chunk_size, inputs["input_ids"].shape[0]
        if not chunk or size <= chunk:
            return self._embed_batch(inputs, kind, tower)
        mask = inputs["attention_mask"]
        order = torch.argsort(mask.sum(1), descending=True, stable=True)
        parts = []
        for start in range(0, size, chunk):
            index = order[start : start + chunk]
            columns = mask[index].any(0).nonzero()
            width = int(columns.max()) + 1 if len(columns) else mask.shape[1]
            parts.append(self._embed_batch({k: v[index, :width] for k, v in inputs.items()}, kind, tower))
        return torch.cat(parts)[torch.argsort(order)]

    def _embed_batch(self, inputs: dict[str, torch.Tensor], kind: str, tower: Any = None) -> torch.Tensor:
        hidden = (self.tower(kind) if tower is None else tower)(**inputs).last_hidden_state
        embeddings = pool(hidden, inputs["attention_mask"], self.retrieval_config.pooling)
        if self.retrieval_config.normalize:
            embeddings = nn.functional.normalize(embeddings.float(), dim=-1)
        return embeddings

    def forward(
        self, query: dict[str, torch.Tensor] | None = None, document: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Embeddings of a tokenized query batch and/or document batch, in one call (one DDP forward)."""
        out = {}
        if query is not None:
            out["query_embeddings"] = self.embed(query, "query")
        if document is not None:
            out["document_embeddings"] = self.embed(document, "document")
        return out

    def similarity(self, query_embeddings: torch.Tensor, document_embeddings: torch.Tensor) -> torch.Tensor:
        """Score logits ``q·d / τ`` of shape ``[queries, documents]``."""
        return query_embeddings @ document_embeddings.T / self.retrieval_config.temperature

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Activation (gradient) checkpointing in every tower; ``Trainer`` calls it for ``gradient_checkpointing``."""
        kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        for tower in {id(self.tower(kind)): self.tower(kind) for kind in KINDS}.values():
            tower.activation_checkpointing_enable(
                activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
            )

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """The older name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ---------------------------------------------------------------- tokenization and encoding of raw texts
    def prefixed(self, texts: list[str], kind: str) -> list[str]:
        _check_kind(kind)
        check_text_list(texts)
        prefix = self.retrieval_config.query_prefix if kind == "query" else self.retrieval_config.document_prefix
        return [prefix + t for t in texts] if prefix else list(texts)

    def max_length(self, kind: str) -> int:
        _check_kind(kind)
        config = self.retrieval_config
        return config.query_max_length if kind == "query" else config.document_max_length

    def tokenize(self, texts: list[str], kind: str, max_length: int | None = None, padding: bool = True):
        """Tokenize with the prefix and max length of ``kind`` ("query" or "document"); a max length past what the
        model reads (see :func:`input_length_limit`) is refused rather than failing inside the model."""
        if max_length is not None:
            _check_max_length(max_length)
        length = max_length or self.max_length(kind)
        limit = input_length_limit(self.query_encoder, self.tokenizer)
        if limit is not None and length > limit:
            raise ValueError(f"{kind} max_length {length} exceeds the {limit} tokens this model reads")
        return self.tokenizer(
            self.prefixed(texts, kind),
            padding=padding,
            truncation=True,
            max_length=length,
            return_tensors="pt" if padding else None,
        )

    def encode(
        self,
        texts: list[str],
        kind: str = "document",
        batch_size: int = 64,
        bf16: bool = False,
        show_progress_bar: bool = False,
        max_length: int | None = None,
        compile: bool | None = None,
    ) -> np.ndarray:
        """Embed raw texts as float32 ``[n, dim]``. Texts are tokenized once and batched by token length
        (longest first) so each batch pads as little as possible; ``bf16`` runs under bfloat16 autocast.

        ``compile=True`` runs the tower through ``torch.compile`` with inductor freezing (see
        :mod:`hf_robust_ir.modeling.compiled_inference`): a one-off compile of 15-35 s, then 1.4-1.7x faster bf16
        encoding on a CPU with AMX-BF16. The compiled tower is kept for later calls and rebuilt when the weights
        change. ``None`` (default) compiles for bf16 encoding of at least 10,000 texts on CPU; ``False`` never compiles.
        """
        check_text_list(texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if len(texts) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        encoded = self.tokenize(list(texts), kind, max_length=max_length, padding=False)
        order = np.argsort([-len(ids) for ids in encoded["input_ids"]], kind="stable")
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        device = self.device
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        was_training = self.training
        self.eval()
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        tower = self.compiled_tower(kind) if should_compile(compile, len(texts), bf16, device.type) else None
        starts = range(0, len(texts), batch_size)
        with torch.inference_mode(), autocast:
            for start in tqdm(starts, desc=f"encode {PLURALS[kind]}", disable=not show_progress_bar, unit="batch"):
                index = order[start : start + batch_size]
                batch = self.tokenizer.pad({k: [encoded[k][i] for i in index] for k in keys}, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                out[index] = self.embed(batch, kind, tower).float().cpu().numpy()
        self.train(was_training)
        return out

    def compiled_tower(self, kind: str) -> CompiledTower:
        """The inference-compiled tower of ``kind``, built on first use and rebuilt after its weights change."""
        name = "query" if kind == "query" or not self.retrieval_config.separate_towers else "document"
        module = self.tower(kind)
        compiled = self._compiled_towers.get(name)
        if compiled is None or not compiled.is_current(module):
            compiled = self._compiled_towers[name] = CompiledTower(module)
        return compiled

    def encode_queries(self, texts: list[str], batch_size: int = 64, bf16: bool = False, **kwargs) -> np.ndarray:
        return self.encode(texts, "query", batch_size=batch_size, bf16=bf16, **kwargs)

    def encode_documents(self, texts: list[str], batch_size: int = 64, bf16: bool = False, **kwargs) -> np.ndarray:
        return self.encode(texts, "document", batch_size=batch_size, bf16=bf16, **kwargs)

    @property
    def embedding_dim(self) -> int:
        return int(self.query_encoder.config.hidden_size)
