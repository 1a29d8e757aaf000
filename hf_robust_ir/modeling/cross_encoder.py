"""CrossEncoder: a reranker that reads a query and a document together and outputs one relevance logit.

``s(q, d) = w·h_[CLS](q ⊕ d) + b``: the pair is encoded as one sequence (``[CLS] q [SEP] d [SEP]``) and a linear
head maps the (pooled) ``[CLS]`` representation to a single score (Nogueira & Cho 2019, "Passage Re-ranking with
BERT", arXiv:1901.04085).

A saved CrossEncoder folder is a ``transformers`` sequence-classification folder (``num_labels=1``, safetensors,
tokenizer) that loads in ``AutoModelForSequenceClassification`` and in ``sentence_transformers.CrossEncoder``, plus
``hf_robust_ir_config.json`` (max length, temperature). Its ``config.json`` (and ``config_sentence_transformers.json``
when the folder already has one) names the identity as the sentence-transformers activation, so
``sentence_transformers.CrossEncoder(folder).predict`` returns the same raw logits as :meth:`CrossEncoder.predict`
(without it, sentence-transformers applies a sigmoid to one-label models).

With a LoRA adapter (peft, :meth:`CrossEncoder.add_lora`) only the adapter and the trained head are saved, next to the
name of the base model; ``AutoModelForSequenceClassification`` and :meth:`CrossEncoder.from_pretrained` load such a
folder, ``sentence_transformers.CrossEncoder`` does not (it reads ``config.json``, which an adapter folder must not
hold): save :meth:`CrossEncoder.merge_lora`'s full model for it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from ..json_files import read_json_file
from .bi_encoder import (
    absolute_adapter_bases,
    absolute_if_local,
    adapter_base_folder,
    check_lora_can_be_added,
    model_card_kept,
)

CONFIG_NAME = "hf_robust_ir_config.json"
# sentence-transformers 6's own settings file, read before config.json (a folder it saved has one)
SENTENCE_TRANSFORMERS_CONFIG_NAME = "config_sentence_transformers.json"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# What sentence-transformers applies to the logits of a model saved by CrossEncoder.save_pretrained: nothing.
SENTENCE_TRANSFORMERS_ACTIVATION = "torch.nn.modules.linear.Identity"


@dataclass
class CrossEncoderConfig:
    """How a CrossEncoder reads pairs (``max_length`` tokens for query + document) and scales its logits for losses."""

    max_length: int = 512
    temperature: float = 1.0

    def __post_init__(self):
        if self.max_length <= 0:
            raise ValueError(f"max_length must be > 0, got {self.max_length}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> CrossEncoderConfig:
        data = read_json_file(path)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _fit_max_length(max_length: int, model: nn.Module, tokenizer: PreTrainedTokenizerBase, explicit: bool) -> int:
    """Cap ``max_length`` at the model's position embeddings and, unless it was asked for explicitly, at the
    tokenizer's limit (a saved reranker's tokenizer carries its max length for sentence-transformers)."""
    from .bi_encoder import position_limit

    limits = [position_limit(model)]  # RoBERTa-style embeddings: positions less their padding offset
    if not explicit and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min([max_length] + [x for x in limits if x and x > 0])


class CrossEncoder(nn.Module):
    """Reranker over (query, document) pairs: ``s(q, d) = w·h_[CLS](q ⊕ d) + b`` (Nogueira & Cho 2019).

    ``forward(**tokenized_pairs)`` returns the raw logits ``[N]``; losses live outside the model and receive
    :meth:`group_scores`, the logits of each query's candidate group divided by ``temperature``.
    """

    # ``forward`` takes **features; this tells transformers.Trainer it takes no loss kwargs (so gradient
    # accumulation divides the loss as usual).
    accepts_loss_kwargs = False

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: CrossEncoderConfig | None = None,
    ):
        super().__init__()
        if getattr(model.config, "num_labels", 1) != 1:
            num_labels = model.config.num_labels
            raise ValueError(f"a CrossEncoder scores with one logit; the model has num_labels={num_labels}")
        self.model = model
        self.tokenizer = tokenizer
        self.retrieval_config = config or CrossEncoderConfig()
        # modules the loaded folder had no weights for (a head, BERT's pooler, new on an encoder): see add_lora
        self.new_modules: list[str] = []
        self._merged_in_memory = False  # see add_lora

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        max_length: int | None = None,
        trust_remote_code: bool = False,
        *,
        torch_dtype: Any = None,
        base_model: str | None = None,
        **overrides: Any,
    ) -> CrossEncoder:
        """Load a reranker folder, or start one from an encoder folder (a new one-label head is initialized), or
        load a LoRA adapter folder on top of the base model it names (``base_model``: a local copy of that model),
        the adapter trainable, as it was saved.

        ``max_length`` defaults to the saved value, else 512; it is capped at the model's position embeddings
        (and, when not given, at the tokenizer's limit).
        Keyword ``overrides`` replace other fields of :class:`CrossEncoderConfig` (``temperature=0.1``).
        """
        folder = Path(path)
        if not folder.exists():
            raise FileNotFoundError(
                f"model folder {str(path)!r} does not exist (Hub names need network access; pass a local folder)"
            )
        adapter = (folder / "adapter_config.json").is_file()
        if not adapter and not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is not a model folder: it holds neither config.json nor adapter_config.json"
            )
        unknown = set(overrides) - {f.name for f in dataclasses.fields(CrossEncoderConfig)}
        if unknown:
            raise TypeError(f"unknown CrossEncoder option(s): {sorted(unknown)}")
        settings = dataclasses.asdict(
            CrossEncoderConfig.from_json_file(folder / CONFIG_NAME)
            if (folder / CONFIG_NAME).exists()
            else CrossEncoderConfig()
        )
        settings.update(overrides)
        if max_length is not None:
            settings["max_length"] = max_length

        model_folder = absolute_if_local(adapter_base_folder(folder, base_model) if adapter else str(folder))
        model_config = AutoConfig.from_pretrained(model_folder, trust_remote_code=trust_remote_code)
        has_head = any(a.endswith("ForSequenceClassification") for a in (model_config.architectures or []))
        if has_head and model_config.num_labels != 1:
            raise ValueError(
                f"{folder} has a {model_config.num_labels}-label classification head; a CrossEncoder needs one label"
            )
        model_config.num_labels = 1
        kwargs: dict[str, Any] = {"config": model_config, "trust_remote_code": trust_remote_code}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            model_folder, output_loading_info=True, **kwargs
        )
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
            absolute_adapter_bases(model)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        settings["max_length"] = _fit_max_length(settings["max_length"], model, tokenizer, max_length is not None)
        reranker = cls(model, tokenizer, CrossEncoderConfig(**settings))
        if not adapter:
            reranker.new_modules = sorted({key.rsplit(".", 1)[0] for key in loading["missing_keys"]})
        return reranker

    def save_pretrained(self, path: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write a folder that loads in ``transformers``, ``sentence_transformers.CrossEncoder`` and
        :meth:`from_pretrained`, all with the same scores."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        st_settings = dict(getattr(self.model.config, "sentence_transformers", None) or {})
        st_settings["activation_fn"] = SENTENCE_TRANSFORMERS_ACTIVATION
        self.model.config.sentence_transformers = st_settings
        with model_card_kept(folder):
            self.model.save_pretrained(str(folder), safe_serialization=safe_serialization)
        # sentence-transformers truncates pairs at the tokenizer's model_max_length
        self.tokenizer.model_max_length = self.max_length
        self.tokenizer.save_pretrained(str(folder))
        st_config_file = folder / SENTENCE_TRANSFORMERS_CONFIG_NAME
        if st_config_file.exists():  # a folder sentence-transformers saved: its activation (a sigmoid) would win
            st_config = read_json_file(st_config_file)
            st_config["activation_fn"] = SENTENCE_TRANSFORMERS_ACTIVATION
            st_config_file.write_text(json.dumps(st_config, indent=2) + "\n")
        (folder / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self.retrieval_config), indent=2) + "\n")

    # ---------------------------------------------------------------- LoRA (peft)
    @property
    def holds_lora(self) -> bool:
        """Whether the model holds a LoRA adapter (peft), added or loaded, and not merged."""
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def add_lora(self, lora_config: Any) -> CrossEncoder:
        """Wrap the model with a peft adapter (e.g. ``peft.LoraConfig(r=8, target_modules=["query", "value"])``).

        A config without ``task_type`` gets a copy with ``"SEQ_CLS"``: the one-logit head then trains and is saved
        with the adapter. So do the :attr:`new_modules` (random weights that the loaded folder lacked, such as the head
        and BERT's pooler of a reranker started on an encoder), which are added to ``modules_to_save``: saved
        without them, the adapter would reload onto other random weights. A model that already holds an adapter is
        refused, and so is one merged in memory: ``merge_lora()``, save and load the merged model first.
        """
        from peft import get_peft_model

        check_lora_can_be_added(self.holds_lora, self._merged_in_memory)
        lora_config = copy.deepcopy(lora_config)
        if getattr(lora_config, "task_type", None) is None:
            lora_config.task_type = "SEQ_CLS"
        saved = list(lora_config.modules_to_save or [])
        if any(name not in saved for name in self.new_modules):
            lora_config.modules_to_save = saved + [name for name in self.new_modules if name not in saved]
        self.model = get_peft_model(self.model, lora_config)
        return self

    def merge_lora(self) -> CrossEncoder:
        """Fold the adapter into the base weights (``merge_and_unload``); the result saves as a full model, which
        loads in ``sentence_transformers.CrossEncoder`` too."""
        if not self.holds_lora:
            raise ValueError("the model holds no LoRA adapter to merge")
        self.model = self.model.merge_and_unload()
        self._merged_in_memory = True
        return self

    # ---------------------------------------------------------------- forward and scores
    @property
    def max_length(self) -> int:
        return self.retrieval_config.max_length

    @property
    def temperature(self) -> float:
        return self.retrieval_config.temperature

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        """Raw relevance logits ``[N]`` of a tokenized batch of pairs (keys other than the model inputs are ignored)."""
        inputs = {k: v for k, v in features.items() if k in MODEL_INPUTS}
        return self.model(**inputs).logits.squeeze(-1)

    def group_scores(self, scores: torch.Tensor, group_size: int) -> torch.Tensor:
        """Scores ``[B * G]`` of consecutive query groups, as loss logits ``[B, G] = s / τ``.

        Row ``b`` holds the scores of pairs ``b*G .. b*G + G - 1`` (each query's candidates, in collator order).
        """
        if group_size <= 0 or scores.numel() % group_size:
            raise ValueError(f"cannot split {scores.numel()} scores into groups of {group_size}")
        return scores.reshape(-1, group_size) / self.temperature

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Activation (gradient) checkpointing in the encoder; ``Trainer`` calls it for ``gradient_checkpointing``."""
        self.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs or {"use_reentrant": False},
            every_n_layers=every_n_layers,
            offload=offload,
        )

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """The older name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ---------------------------------------------------------------- raw texts
    def tokenize(self, queries: list[str], documents: list[str], padding: bool = True, max_length: int | None = None):
        """Tokenize pairs as one sequence each, truncating the longer side first to ``max_length`` tokens."""
        if len(queries) != len(documents):
            raise ValueError(f"got {len(queries)} queries but {len(documents)} documents")
        return self.tokenizer(
            list(queries),
            list(documents),
            padding=padding,
            truncation="longest_first",
            max_length=max_length or self.max_length,
            return_tensors="pt" if padding else None,
        )

    def predict(
        self,
        pairs: list[tuple[str, str]],
        batch_size: int = 32,
        bf16: bool = False,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """Raw scores (float32 ``[N]``) of (query, document) pairs, in input order. Pairs are tokenized once and
        batched by token length (longest first) so each batch pads as little as possible; ``bf16`` runs under
        bfloat16 autocast."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pairs = [pairs] if isinstance(pairs, str) else list(pairs)
        if any(isinstance(p, str) for p in pairs):  # it would be read as a pair of its first two characters
            raise ValueError("predict expects (query, document) pairs, got a str: wrap one pair in a list")
        pairs = [tuple(p) for p in pairs]
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        if any(len(p) != 2 for p in pairs):
            raise ValueError("predict expects (query, document) pairs")
        encoded = self.tokenize([p[0] for p in pairs], [p[1] for p in pairs], padding=False)
        order = np.argsort([-len(ids) for ids in encoded["input_ids"]], kind="stable")
        keys = [k for k in MODEL_INPUTS if k in encoded]
        device = self.device
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        was_training = self.training
        self.eval()
        out = np.empty(len(pairs), dtype=np.float32)
        starts = range(0, len(pairs), batch_size)
        with torch.inference_mode(), autocast:
            for start in tqdm(starts, desc="rerank", disable=not show_progress_bar, unit="batch"):
                index = order[start : start + batch_size]
                batch = self.tokenizer.pad({k: [encoded[k][i] for i in index] for k in keys}, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                out[index] = self(**batch).float().cpu().numpy()
        self.train(was_training)
        return out

    def rank(
        self,
        query: str,
        documents: list[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        bf16: bool = False,
    ) -> list[dict[str, Any]]:
        """Documents by decreasing score: ``[{"corpus_id": i, "score": s(query, documents[i])}, ...]``
        (``"text"`` too with ``return_documents``); ties keep input order."""
        if isinstance(documents, str):  # it would be read as one document per character
            raise ValueError("rank expects a list of documents, got a str: wrap one document in a list")
        scores = self.predict([(query, d) for d in documents], batch_size=batch_size, bf16=bf16)
        order = np.argsort(-scores, kind="stable")[:top_k]
        ranked = []
        for i in order:
            hit: dict[str, Any] = {"corpus_id": int(i), "score": float(scores[i])}
            if return_documents:
                hit["text"] = documents[i]
            ranked.append(hit)
        return ranked
