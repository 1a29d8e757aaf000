"""Synthetic queries for passages, the first step of self-training (NST, arXiv 2311.15563, §4 of the methods).

A :class:`QueryGenerator` turns documents into queries: ``generate(documents, num_queries) -> list[list[str]]``, up to
``num_queries`` distinct queries per document (fewer when a document is too short, empty, or the queries repeat).

- :class:`ExtractiveQueryGenerator` needs no model (the offline default): a sentence of the document, or a random
  window of words as in the inverse cloze task (Lee et al. 2019, arXiv 1906.00300);
- :class:`HFQueryGenerator`: a doc2query model (Nogueira et al. 2019, docT5query), seq2seq (T5, BART) or a causal LM
  with a prompt, sampling with top-k / top-p;
- :func:`train_query_generator` fine-tunes such a model on (document, query) pairs with the ``transformers`` trainers;
- :func:`synthetic_query_rows` turns generated queries into canonical rows whose positive is the source passage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

DEFAULT_CAUSAL_PROMPT = "Generate a search query for this passage:\n{document}\nQuery:"
DEFAULT_SEQ2SEQ_TEMPLATE = "{document}"
GENERATOR_CONFIG_NAME = "query_generator.json"
"""Written next to a model by :func:`train_query_generator`: the architecture and the input template it was trained
with, which :class:`HFQueryGenerator` reuses unless told otherwise."""

_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def _stable_seed(*parts: Any) -> int:
    """A 64-bit seed from ``parts`` that is the same in every process (unlike Python's salted ``hash``)."""
    payload = json.dumps(parts, ensure_ascii=False).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


def _unique(texts: Sequence[str], document: str = "") -> list[str]:
    """Stripped, non-empty texts in first-seen order, without repeats and without a copy of the whole ``document``
    (whitespace collapsed): a query that is its own passage is a trivial positive."""
    whole = " ".join(document.split())
    seen: dict[str, None] = {}
    for text in texts:
        text = text.strip()
        if text and text not in seen and " ".join(text.split()) != whole:
            seen[text] = None
    return list(seen)


class QueryGenerator(ABC):
    """Writes search queries for documents."""

    @abstractmethod
    def generate(self, documents: Sequence[str], num_queries: int = 1) -> list[list[str]]:
        """Up to ``num_queries`` distinct queries per document (one list per document, in order; ``[]`` for a
        document that gives none)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The settings that decide the queries (for the model card)."""


# ---------------------------------------------------------------- extractive
class ExtractiveQueryGenerator(QueryGenerator):
    """Queries cut from the document itself; no model needed.

    - ``mode="sentence"``: a sentence of the document (split after ``.``, ``?`` or ``!`` followed by whitespace).
      Sentences with fewer than ``min_words`` words are skipped; a longer one than ``max_words`` is cropped to a
      random window of ``max_words`` words. The ``num_queries`` queries of a document are distinct sentences.
    - ``mode="span"``: a random window of ``L`` consecutive words, ``L`` uniform in ``[min_words, max_words]``
      (shorter than the document): the pseudo-query of the inverse cloze task (Lee et al. 2019).

    Words are whitespace-separated and joined by one space; a query is never the whole document. Choices are drawn
    from a generator seeded by a stable hash of ``(seed, document text, query index)``: the same document gets the
    same queries in every run and batch, and asking for more queries keeps the first ones.
    """

    def __init__(
        self, mode: Literal["sentence", "span"] = "sentence", min_words: int = 4, max_words: int = 24, seed: int = 0
    ):
        if mode not in ("sentence", "span"):
            raise ValueError(f"mode must be 'sentence' or 'span', got {mode!r}")
        if min_words < 1 or max_words < min_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
        self.mode, self.min_words, self.max_words, self.seed = mode, min_words, max_words, seed

    @staticmethod
    def sentences(document: str) -> list[str]:
        """The document's sentences: split after ``.``/``?``/``!`` followed by whitespace, stripped, non-empty."""
        return [s.strip() for s in _SENTENCE_END.split(document.strip()) if s.strip()]

    def _window(self, words: list[str], length: int, rng: random.Random) -> str:
        start = rng.randint(0, len(words) - length)
        return " ".join(words[start : start + length])

    def _sentence_queries(self, document: str, num_queries: int) -> list[str]:
        sentences = _unique([" ".join(s.split()) for s in self.sentences(document)])
        eligible = [words for words in (s.split() for s in sentences) if len(words) >= self.min_words]
        order = random.Random(_stable_seed(self.seed, document, "order")).sample(range(len(eligible)), len(eligible))
        queries = []
        for k, i in enumerate(order[:num_queries]):
            words = eligible[i]
            length = min(len(words), self.max_words)
            queries.append(self._window(words, length, random.Random(_stable_seed(self.seed, document, k))))
        return queries

    def _span_queries(self, document: str, num_queries: int) -> list[str]:
        words = document.split()
        if len(words) <= self.min_words:
            return []
        queries = []
        for k in range(num_queries):
            rng = random.Random(_stable_seed(self.seed, document, k))
            length = rng.randint(self.min_words, min(self.max_words, len(words) - 1))
            queries.append(self._window(words, length, rng))
        return queries

    def generate(self, documents: Sequence[str], num_queries: int = 1) -> list[list[str]]:
        make = self._sentence_queries if self.mode == "sentence" else self._span_queries
        return [
            _unique(make(document or "", num_queries), document or "") if num_queries > 0 else []
            for document in documents
        ]

    def config(self) -> dict[str, Any]:
        return {
            "generator": "extractive",
            "mode": self.mode,
            "min_words": self.min_words,
            "max_words": self.max_words,
            "seed": self.seed,
        }


# ---------------------------------------------------------------- doc2query with a transformers model
def _encode(tokenizer: Any, text: str, is_encoder_decoder: bool) -> list[int]:
    """Input ids as generation and training both build them: the tokenizer's own special tokens for a seq2seq
    encoder; for a causal LM the text alone, after the BOS token when the tokenizer has one."""
    if is_encoder_decoder:
        return tokenizer(text, add_special_tokens=True)["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos, *ids] if bos is not None else ids


def _clip_document(tokenizer: Any, document: str, budget: int) -> str:
    """The longest prefix of ``document`` of at most ``budget`` tokens (cut at a token boundary)."""
    if budget <= 0:
        return ""
    fast = bool(getattr(tokenizer, "is_fast", False))
    encoded = tokenizer(document, add_special_tokens=False, return_offsets_mapping=fast)
    ids = encoded["input_ids"]
    if len(ids) <= budget:
        return document
    if fast:
        return document[: encoded["offset_mapping"][budget - 1][1]]
    return tokenizer.decode(ids[:budget], skip_special_tokens=True)


def _fill(tokenizer: Any, template: str, document: str, max_length: int, is_encoder_decoder: bool) -> str:
    """``template`` with ``{document}`` filled in, the document clipped so that the whole input fits ``max_length``
    tokens (the instructions around the document are never cut). The filled text is counted again and the document
    clipped further while it is too long: the text around the document may take more tokens with the document in (two
    newlines may make one token, one newline on each side of the document two)."""
    overhead = len(_encode(tokenizer, template.replace("{document}", ""), is_encoder_decoder))
    if overhead >= max_length:  # no room left for the document: the model would see the instructions alone
        raise ValueError(
            f"the prompt takes {overhead} tokens without the document, leaving none of max_input_length={max_length}"
            " for it: raise max_input_length or shorten the prompt"
        )
    budget = max_length - overhead
    while True:
        text = template.replace("{document}", _clip_document(tokenizer, document, budget))
        excess = len(_encode(tokenizer, text, is_encoder_decoder)) - max_length
        if excess <= 0 or budget == 0:  # with budget 0 the text is the template alone, which fits
            return text
        budget = max(budget - excess, 0)


def _check_template(template: str, name: str) -> str:
    if "{document}" not in template:
        raise ValueError(f"{name} must contain the placeholder '{{document}}', got {template!r}")
    return template


def _saved_generator_config(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / GENERATOR_CONFIG_NAME
    if not file.is_file():
        return {}
    return json.loads(file.read_text(encoding="utf-8"))


def _is_encoder_decoder(config: Any, architecture: str) -> bool:
    if architecture == "auto":
        return bool(getattr(config, "is_encoder_decoder", False))
    if architecture not in ("seq2seq", "causal"):
        raise ValueError(f"architecture must be 'auto', 'seq2seq' or 'causal', got {architecture!r}")
    return architecture == "seq2seq"


class HFQueryGenerator(QueryGenerator):
    """Queries written by a ``transformers`` model: a doc2query seq2seq model or a causal LM.

    - seq2seq (``AutoModelForSeq2SeqLM``): the input is ``input_template`` with ``{document}`` filled in (default
      ``"{document}"``, as docT5query reads passages);
    - causal (``AutoModelForCausalLM``): the input is ``prompt`` with ``{document}`` filled in; batches are left-padded
      and only the new tokens are decoded.

    ``architecture="auto"`` picks seq2seq when the model's config ``is_encoder_decoder``. The document is clipped so
    that the input fits ``max_input_length`` tokens. Each document gets ``num_queries`` sequences
    (``num_return_sequences``) of at most ``max_new_tokens`` tokens, sampled with ``top_k`` / ``top_p`` (with
    ``do_sample=False``: beam search with ``num_queries`` beams); they are stripped, and empty or repeated ones, or a
    copy of the whole document, dropped. The random state is seeded with ``seed`` at the start of each
    :meth:`generate` call, inside a fork of the global RNG (which is left as it was): the same documents in the same
    batches give the same queries.

    ``prompt`` / ``input_template`` / ``architecture`` default to the values :func:`train_query_generator` saved with
    the model (``query_generator.json``), else to :data:`DEFAULT_CAUSAL_PROMPT` / :data:`DEFAULT_SEQ2SEQ_TEMPLATE` /
    ``"auto"``. ``model_name_or_path`` may also be a loaded model (see :meth:`from_model`); a model loaded from a path
    goes to the GPU when there is one (``device`` overrides).
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | Any,
        architecture: Literal["auto", "seq2seq", "causal"] | None = None,
        prompt: str | None = None,
        input_template: str | None = None,
        max_input_length: int = 256,
        max_new_tokens: int = 32,
        do_sample: bool = True,
        top_k: int = 25,
        top_p: float = 0.95,
        batch_size: int = 16,
        seed: int = 0,
        device: str | None = None,
        *,
        tokenizer: Any = None,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        saved: dict[str, Any] = {}
        if isinstance(model_name_or_path, (str, os.PathLike)):
            path = str(model_name_or_path)
            saved = _saved_generator_config(path) if os.path.isdir(path) else {}
            architecture = architecture or saved.get("architecture", "auto")
            encoder_decoder = _is_encoder_decoder(AutoConfig.from_pretrained(path), architecture)
            auto_model = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
            model = auto_model.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path) if tokenizer is None else tokenizer
            if device is None:
                import torch

                device = "cuda" if torch.cuda.is_available() else None
        else:
            if tokenizer is None:
                raise ValueError("pass the tokenizer together with a model object")
            model = model_name_or_path
            architecture = architecture or "auto"
            encoder_decoder = _is_encoder_decoder(model.config, architecture)
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.is_encoder_decoder = encoder_decoder
        self.architecture = "seq2seq" if encoder_decoder else "causal"
        self.prompt = _check_template(prompt or saved.get("prompt") or DEFAULT_CAUSAL_PROMPT, "prompt")
        self.input_template = _check_template(
            input_template or saved.get("input_template") or DEFAULT_SEQ2SEQ_TEMPLATE, "input_template"
        )
        self.max_input_length, self.max_new_tokens = max_input_length, max_new_tokens
        self.do_sample, self.top_k, self.top_p = do_sample, top_k, top_p
        self.batch_size, self.seed = batch_size, seed
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **kwargs: Any) -> HFQueryGenerator:
        """A generator over an already-loaded model and tokenizer (left on the model's device unless ``device``)."""
        return cls(model, tokenizer=tokenizer, **kwargs)

    @property
    def template(self) -> str:
        """The input template in use: ``input_template`` for seq2seq models, ``prompt`` for causal ones."""
        return self.input_template if self.is_encoder_decoder else self.prompt

    def input_ids(self, document: str) -> list[int]:
        """The model input for one document: the template filled in, clipped to ``max_input_length`` tokens."""
        text = _fill(self.tokenizer, self.template, document, self.max_input_length, self.is_encoder_decoder)
        return _encode(self.tokenizer, text, self.is_encoder_decoder)

    def _generation_kwargs(self, num_queries: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_return_sequences": num_queries,
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            kwargs.update(top_k=self.top_k, top_p=self.top_p)
        else:
            kwargs.update(num_beams=num_queries)
        return kwargs

    def generate(self, documents: Sequence[str], num_queries: int = 1) -> list[list[str]]:
        import torch

        out: list[list[str]] = [[] for _ in documents]
        todo = [i for i, document in enumerate(documents) if document and document.strip() and num_queries > 0]
        if not todo:
            return out
        device = next(self.model.parameters()).device
        cuda = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        side = "right" if self.is_encoder_decoder else "left"
        kwargs = self._generation_kwargs(num_queries)
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            for start in range(0, len(todo), self.batch_size):
                index = todo[start : start + self.batch_size]
                ids = [self.input_ids(documents[i]) for i in index]
                inputs = self.tokenizer.pad({"input_ids": ids}, padding_side=side, return_tensors="pt")
                inputs = {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
                with torch.inference_mode():
                    generated = self.model.generate(**inputs, **kwargs)
                if not self.is_encoder_decoder:
                    generated = generated[:, inputs["input_ids"].shape[1] :]
                texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
                for j, i in enumerate(index):
                    out[i] = _unique(texts[j * num_queries : (j + 1) * num_queries], documents[i])
        return out

    def config(self) -> dict[str, Any]:
        return {
            "generator": "hf",
            "model": getattr(self.model.config, "_name_or_path", None) or type(self.model).__name__,
            "architecture": self.architecture,
            "template": self.template,
            "max_input_length": self.max_input_length,
            "max_new_tokens": self.max_new_tokens,
            "decoding": "sampling" if self.do_sample else "beam_search",
            "top_k": self.top_k if self.do_sample else None,
            "top_p": self.top_p if self.do_sample else None,
            "seed": self.seed,
        }


def doc2query_features(
    tokenizer: Any,
    template: str,
    document: str,
    query: str,
    max_input_length: int = 256,
    max_target_length: int = 32,
    is_encoder_decoder: bool = True,
    eos_token_id: int | None = None,
) -> dict[str, list[int]]:
    """One training example of :func:`train_query_generator`: ``input_ids``, ``attention_mask``, ``labels``.

    Seq2seq: the encoder input is ``template`` over the document (clipped to ``max_input_length`` tokens), the labels
    are the query's tokens (at most ``max_target_length``). Causal: the input is the prompt, a space, the query (at
    most ``max_target_length`` tokens) and EOS (``eos_token_id``, default the tokenizer's; none when both are
    ``None``); the labels are -100 on the prompt tokens and the input ids after them.
    """
    text = _fill(tokenizer, template, document, max_input_length, is_encoder_decoder)
    prompt_ids = _encode(tokenizer, text, is_encoder_decoder)
    if is_encoder_decoder:
        labels = tokenizer(text_target=query.strip(), max_length=max_target_length, truncation=True)["input_ids"]
        return {"input_ids": prompt_ids, "attention_mask": [1] * len(prompt_ids), "labels": labels}
    full = _encode(tokenizer, text + " " + query.strip(), is_encoder_decoder)[: len(prompt_ids) + max_target_length]
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if eos is not None:
        full = [*full, eos]
    labels = [-100] * len(prompt_ids) + full[len(prompt_ids) :]
    return {"input_ids": full, "attention_mask": [1] * len(full), "labels": labels}


def train_query_generator(
    pairs: Sequence[tuple[str, str]],
    model_name_or_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    architecture: Literal["auto", "seq2seq", "causal"] = "auto",
    max_input_length: int = 256,
    max_target_length: int = 32,
    prompt: str = DEFAULT_CAUSAL_PROMPT,
    input_template: str = DEFAULT_SEQ2SEQ_TEMPLATE,
    **training_kwargs: Any,
) -> str:
    """Fine-tune a doc2query model on ``(document, query)`` pairs; returns ``output_dir``.

    Seq2seq models train with ``Seq2SeqTrainer`` + ``Seq2SeqTrainingArguments`` + ``DataCollatorForSeq2Seq``
    (input: ``input_template`` over the document; target: the query). Causal LMs train with ``Trainer`` on
    ``prompt(document) + " " + query + EOS`` (the tokenizer's EOS, else the model's), the loss on the query and EOS
    only (prompt labels are -100). Documents are clipped to fit ``max_input_length`` tokens with the template, queries
    cut at ``max_target_length`` tokens (:func:`doc2query_features`).

    ``training_kwargs`` go to the training arguments, over the defaults ``num_train_epochs=1``,
    ``learning_rate=5e-5``, ``per_device_train_batch_size=8``, ``report_to="none"``, ``save_strategy="no"``. The model,
    the tokenizer and ``query_generator.json`` (architecture and template, read back by :class:`HFQueryGenerator`) are
    saved to ``output_dir``.
    """
    import datasets
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        Trainer,
        TrainingArguments,
    )

    pairs = [(document, query) for document, query in pairs if document.strip() and query.strip()]
    if not pairs:  # an empty query would teach the model to stop at once
        raise ValueError("no (document, query) pairs with a non-empty document and query to train on")
    path, output_dir = str(model_name_or_path), str(output_dir)
    encoder_decoder = _is_encoder_decoder(AutoConfig.from_pretrained(path), architecture)
    template = _check_template(input_template if encoder_decoder else prompt, "template")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = (AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM).from_pretrained(path)

    eos = tokenizer.eos_token_id
    if eos is None:  # e.g. a WordPiece tokenizer: the model's own end-of-sequence token
        eos = model.generation_config.eos_token_id or model.config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    rows = [
        doc2query_features(
            tokenizer, template, document, query, max_input_length, max_target_length, encoder_decoder, eos
        )
        for document, query in pairs
    ]
    dataset = datasets.Dataset.from_list(rows)
    settings: dict[str, Any] = {
        "output_dir": output_dir,
        "num_train_epochs": 1,
        "learning_rate": 5e-5,
        "per_device_train_batch_size": 8,
        "report_to": "none",
        "save_strategy": "no",
    }
    settings.update(training_kwargs)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model if encoder_decoder else None, label_pad_token_id=-100)
    if encoder_decoder:
        trainer: Trainer = Seq2SeqTrainer(
            model=model,
            args=Seq2SeqTrainingArguments(**settings),
            train_dataset=dataset,
            data_collator=collator,
            processing_class=tokenizer,
        )
    else:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**settings),
            train_dataset=dataset,
            data_collator=collator,
            processing_class=tokenizer,
        )
    trainer.train()
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    saved = {"architecture": "seq2seq" if encoder_decoder else "causal"}
    saved["input_template" if encoder_decoder else "prompt"] = template
    Path(output_dir, GENERATOR_CONFIG_NAME).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    return output_dir


# ---------------------------------------------------------------- canonical rows
def synthetic_query_rows(
    corpus: Mapping[str, str],
    generator: QueryGenerator,
    doc_ids: Sequence[str] | None = None,
    num_queries: int = 1,
    batch_size: int = 64,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Canonical rows for generated queries; each query's one candidate is its source passage, a positive.

    Row ``k`` of document ``d`` (``k`` counting the queries the generator returned for ``d``) is
    ``{"query_id": "synthetic:d:k", "query": q, "doc_ids": [d], "labels": [1.0], "teacher_scores": [],
    "label_source": ["synthetic"]}``; hard negatives and teacher scores come later (the miner, a teacher). Documents
    are those of ``doc_ids``, each once (default: the whole corpus, in its order). ``datasets.Dataset.from_list(rows,
    features=ROW_FEATURES)`` makes them a dataset.
    """
    ids = list(corpus) if doc_ids is None else list(dict.fromkeys(doc_ids))
    missing = [doc_id for doc_id in ids if doc_id not in corpus]
    if missing:
        raise KeyError(f"{len(missing)} doc_ids are not in the corpus, e.g. {missing[0]!r}")
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(ids), desc="synthetic queries", unit="doc", disable=not show_progress) as bar:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            for doc_id, queries in zip(chunk, generator.generate([corpus[d] for d in chunk], num_queries)):
                for k, query in enumerate(q for q in queries if q and q.strip()):
                    rows.append(
                        {
                            "query_id": f"synthetic:{doc_id}:{k}",
                            "query": query.strip(),
                            "doc_ids": [doc_id],
                            "labels": [1.0],
                            "teacher_scores": [],
                            "label_source": ["synthetic"],
                        }
                    )
            bar.update(len(chunk))
    return rows
