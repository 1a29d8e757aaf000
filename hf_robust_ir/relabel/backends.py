"""Chat backends for generative judges: a local Hugging Face causal LM, or an OpenAI-compatible HTTP server.

A backend answers batches of chat conversations (lists of ``{"role", "content"}`` messages):

- ``complete(batch, max_new_tokens) -> list[str | None]``: the greedy answer to each conversation;
- ``yes_no_logprobs(batch) -> list[tuple[float, float] | None]``: ``(log P(yes), log P(no))`` of the answer's first
  token, each a log-sum-exp over the token variants of the word (``yes``, `` yes``, ``Yes``, …).

``None`` stands for an item that got no answer (a failed request); judges turn it into a no verdict.
:class:`OpenAICompatibleBackend` never raises for one failed item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from .base import weights_digest
from .prompts import Message, parse_yes_no

_LEADING_REASONING = re.compile(r"\s*<think>.*?</think>", re.DOTALL)

logger = logging.getLogger(__name__)

Conversation = Sequence[Message]
YES_VARIANTS = ("yes", " yes", "Yes", " Yes", "YES", " YES")
NO_VARIANTS = ("no", " no", "No", " No", "NO", " NO")


def logsumexp(values: Sequence[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))


@runtime_checkable
class ChatBackend(Protocol):
    """What a generative judge needs from a language model."""

    def complete(self, batch: Sequence[Conversation], max_new_tokens: int) -> list[str | None]: ...

    def yes_no_logprobs(self, batch: Sequence[Conversation]) -> list[tuple[float, float] | None]: ...

    def config(self) -> dict[str, Any]: ...


def fold_system_message(messages: Conversation) -> list[Message]:
    """The conversation without system messages, their text at the head of the first user message (for chat
    templates that accept only user and assistant turns)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}" if system else message["content"]
            return rest
    return [{"role": "user", "content": system}, *rest]


def strip_reasoning(text: str) -> str:
    """A reasoning model's answer without the ``<think>…</think>`` block it opens with (the answer parsers read the
    whole text strictly), or without everything up to ``</think>`` when the opening tag was part of the prompt (as
    chat templates of distilled reasoning models put it). An unclosed block is left as it is: the answer was cut off
    while reasoning."""
    match = _LEADING_REASONING.match(text)
    if match:
        return text[match.end() :]
    if "<think>" not in text and "</think>" in text:
        return text.split("</think>", 1)[1]
    return text


def render_plain(messages: Conversation) -> str:
    """The fallback rendering for tokenizers without a chat template: ``System: …\\n\\nUser: …\\n\\nAssistant:``."""
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


def _template_digest(template: Any) -> str | None:
    """A digest of a tokenizer's chat template (a string, or a dict of named templates); ``None`` without one."""
    if not template:
        return None
    text = json.dumps(template, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class HFCausalLMBackend:
    """A ``transformers`` causal LM (``AutoModelForCausalLM``) as a chat backend.

    Conversations are rendered with the tokenizer's chat template (with the generation prompt) when it has one, else
    with :func:`render_plain`; batches are left-padded; decoding is greedy. ``yes_no_logprobs`` reads the
    log-softmax of the next token after the prompt and log-sum-exps the single-token variants of ``yes`` / ``no``.
    A model loaded from a path goes to the GPU when there is one (``device`` overrides); ``trust_remote_code`` is off
    unless asked for; a prompt longer than ``max_prompt_tokens`` gets ``None`` (clip passages with the judges'
    ``max_passage_chars`` instead).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        batch_size: int = 8,
        max_prompt_tokens: int | None = None,
        device: str | None = None,
        torch_dtype: Any = None,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, os.PathLike)):
            kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
            if torch_dtype is not None:
                kwargs["dtype"] = torch_dtype
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(str(model), **kwargs)
            if device is None:
                import torch

                device = "cuda" if torch.cuda.is_available() else None
        elif tokenizer is None:
            raise ValueError("pass the tokenizer together with a model object")
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=trust_remote_code)
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.yes_ids = self._variant_ids(YES_VARIANTS)
        self.no_ids = self._variant_ids(NO_VARIANTS)

    def _variant_ids(self, variants: Sequence[str]) -> list[int]:
        """Ids of the variants that are one token (``" yes"`` in BPE vocabularies, ``"yes"`` in WordPiece), and of the
        vocabulary pieces spelled like a variant: SentencePiece encodes ``"yes"`` as ``"▁yes"``, but after a newline
        (``<|assistant|>\\n``) the model answers with the bare piece ``"yes"``."""
        ids = []
        for variant in variants:
            encoded = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
            single = encoded if len(encoded) == 1 else []
            for i in (*single, self.tokenizer.convert_tokens_to_ids(variant)):
                if i is not None and i not in ids and i != self.tokenizer.unk_token_id:
                    ids.append(i)
        return ids

    def render(self, messages: Conversation) -> str:
        """The prompt text: the tokenizer's chat template (asked not to open a reasoning block, as Qwen3's templates
        take ``enable_thinking``; others ignore it), or the plain rendering for a model without one. A template that
        refuses the system role (Gemma's) gets the system message at the head of the first user message."""
        if not getattr(self.tokenizer, "chat_template", None):
            return (self.tokenizer.bos_token or "") + render_plain(messages)
        from jinja2 import TemplateError

        def apply(conversation: list[Message]) -> str:
            return self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True, enable_thinking=False
            )

        try:
            return apply(list(messages))
        except TemplateError as error:
            if "system" not in str(error).lower() or not any(m["role"] == "system" for m in messages):
                raise
            return apply(fold_system_message(messages))

    def _batches(self, batch: Sequence[Conversation]):
        """``(indices, left-padded inputs)`` per model batch, grouped by length; prompts longer than
        ``max_prompt_tokens`` are left out (their answer is ``None``: a clipped prompt loses its instructions)."""
        # the rendered text carries its own special tokens (chat template, or the BOS of the plain rendering)
        ids = self.tokenizer([self.render(m) for m in batch], add_special_tokens=False)["input_ids"]
        fits = [i for i, x in enumerate(ids) if self.max_prompt_tokens is None or len(x) <= self.max_prompt_tokens]
        if len(fits) < len(ids):
            logger.warning(
                "%d prompt(s) longer than %d tokens get no answer", len(ids) - len(fits), self.max_prompt_tokens
            )
        fits.sort(key=lambda i: -len(ids[i]))
        device = next(self.model.parameters()).device
        for start in range(0, len(fits), self.batch_size):
            index = fits[start : start + self.batch_size]
            inputs = self.tokenizer.pad({"input_ids": [ids[i] for i in index]}, return_tensors="pt")
            yield index, {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}

    def complete(self, batch: Sequence[Conversation], max_new_tokens: int) -> list[str | None]:
        import torch

        out: list[str | None] = [None] * len(batch)
        for index, inputs in self._batches(batch):
            with torch.inference_mode():
                generated = self.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            for i, text in zip(index, self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                out[i] = strip_reasoning(text)
        return out

    def yes_no_logprobs(self, batch: Sequence[Conversation]) -> list[tuple[float, float] | None]:
        import torch

        if not self.yes_ids or not self.no_ids:
            raise ValueError("the tokenizer has no single-token 'yes' / 'no'; use a list prompt instead")
        out: list[tuple[float, float] | None] = [None] * len(batch)
        for index, inputs in self._batches(batch):
            # left padding: the last position is real; positions count real tokens, so padding changes nothing
            positions = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(**inputs, position_ids=positions).logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            yes = torch.logsumexp(logprobs[:, self.yes_ids], dim=-1).tolist()
            no = torch.logsumexp(logprobs[:, self.no_ids], dim=-1).tolist()
            for i, y, n in zip(index, yes, no):
                out[i] = (float(y), float(n))
        return out

    def config(self) -> dict[str, Any]:
        return {
            "backend": "hf_causal_lm",
            "model": getattr(self.model.config, "_name_or_path", None) or type(self.model).__name__,
            "weights": weights_digest(self.model),
            "chat_template": _template_digest(getattr(self.tokenizer, "chat_template", None)),
            "max_prompt_tokens": self.max_prompt_tokens,
            "decoding": "greedy",
        }


class RateLimiter:
    """At most ``rate`` acquisitions per second, spaced evenly: each caller reserves the next free slot
    (``slot_k = max(now, slot_{k-1} + 1/rate)``) and sleeps until it. Thread-safe; ``clock`` and ``sleep`` are
    injectable for tests."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.interval = 1.0 / rate
        self.clock, self.sleep = clock, sleep
        self._next = -math.inf
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for the next slot; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            self.sleep(wait)
        return wait


def _unlisted_bound(pairs: Sequence[tuple[str, float]]) -> float:
    """A log-probability bound for the answer word missing from a top-k list of ``(token, logprob)``: at most the
    smallest listed token that is not an answer word, and at most the probability the list leaves unclaimed
    (``1 - sum``; ``-inf`` when the list holds it all)."""
    others = [lp for token, lp in pairs if token.strip().lower() not in ("yes", "no")]
    left = 1.0 - sum(math.exp(lp) for _, lp in pairs)
    return min([*others, math.log(left) if left > 0 else -math.inf])


RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Answers that say the settings are wrong (key, permission, URL or model name): every request would get the same one.
REFUSED_STATUS = frozenset({401, 403, 404})


class EndpointRefusedError(RuntimeError):
    """The endpoint refused a request in a way every request would be refused (HTTP 401, 403 or 404: a wrong API
    key, base URL or model name); raised instead of giving every item no answer."""


class OpenAICompatibleBackend:
    """An OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp, Ollama, …) as a chat backend.

    Each conversation is one ``POST {base_url}/chat/completions`` with ``temperature=0``. Requests run on a pool of
    ``max_concurrency`` threads, at most ``requests_per_second`` started per second. A timeout, a connection error,
    or a 408/409/425/429/5xx answer is retried up to ``max_retries`` times (an integer >= 0, else ``ValueError``; 0
    sends each request once) after ``min(backoff_max, backoff_base * 2**attempt)`` seconds, jittered to a uniform
    draw in ``[d/2, d]`` (a ``Retry-After`` header raises the wait, up to ``backoff_max``); a 401/403/404 answer (a
    wrong key, URL or model name, which every request would get) raises :class:`EndpointRefusedError`; any other
    failure, or the last retry's, gives ``None`` for that item and a warning that names the endpoint and quotes the
    server's reason (the start of the answer's body). ``yes_no_logprobs`` asks for ``logprobs`` with
    ``top_logprobs``; if the server returns none, it parses the text answer strictly (``yes`` → ``(0, -inf)``).

    The API key comes from ``api_key`` or the environment variable ``api_key_env``; it is sent only in the
    ``Authorization`` header and appears in no log, repr or :meth:`config`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        requests_per_second: float | None = None,
        max_concurrency: int = 4,
        top_logprobs: int = 20,
        extra_body: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ):
        import requests

        # a negative count would send no request at all: every item would silently get no answer
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self._requests = requests
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.requests_per_second = requests_per_second
        self.max_concurrency = max(1, max_concurrency)
        self.top_logprobs = top_logprobs
        self.extra_body = dict(extra_body or {})
        self.sleep = sleep
        self.rate_limiter = RateLimiter(requests_per_second, clock, sleep) if requests_per_second else None
        self._random = random.Random(seed)
        self._local = threading.local()
        self.requests_sent = 0
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r})"

    # ---------------------------------------------------------------- HTTP
    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
        return session

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2**attempt)
        delay = delay / 2 + self._random.uniform(0, delay / 2)
        if retry_after:
            try:
                delay = max(delay, min(self.backoff_max, float(retry_after)))
            except ValueError:
                pass
        return delay

    def _post(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The JSON answer to one request, with retries; ``None`` after the last failure."""
        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        for attempt in range(self.max_retries + 1):
            if self.rate_limiter is not None:
                self.rate_limiter.acquire()
            with self._count_lock:
                self.requests_sent += 1
            retry_after = None
            try:
                response = self._session().post(url, json=payload, headers=headers, timeout=self.timeout)
            except (self._requests.Timeout, self._requests.ConnectionError) as error:
                problem = f"{type(error).__name__}"
            except self._requests.RequestException as error:
                logger.warning("chat request to %s failed: %s", url, type(error).__name__)
                return None
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        logger.warning("chat request to %s: the answer is not JSON", url)
                        return None
                if response.status_code in REFUSED_STATUS:
                    raise EndpointRefusedError(
                        f"chat request to {url} refused with HTTP {response.status_code}: {self._reason(response)} "
                        "(check base_url, the API key and the model name)"
                    )
                if response.status_code not in RETRY_STATUS:
                    logger.warning(
                        "chat request to %s failed with HTTP %d (not retried): %s",
                        url,
                        response.status_code,
                        self._reason(response),
                    )
                    return None
                problem = f"HTTP {response.status_code}: {self._reason(response)}"
                retry_after = response.headers.get("Retry-After")
            if attempt == self.max_retries:
                logger.warning("chat request to %s failed after %d attempts (%s)", url, attempt + 1, problem)
                return None
            self.sleep(self._backoff(attempt, retry_after))
        return None

    def _reason(self, response: Any, limit: int = 300) -> str:
        """The start of a failed answer's body on one line (the server's reason: an unknown model, a prompt over the
        context length), the API key masked."""
        try:
            text = " ".join(str(response.text).split())
        except Exception:  # noqa: BLE001 - an undecodable body has no reason to show
            return "(no readable body)"
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return (text[:limit] + " ...") if len(text) > limit else text or "(empty body)"

    def _map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if self.max_concurrency == 1 or len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(function, items))

    def _payload(self, messages: Conversation, max_new_tokens: int, **extra: Any) -> dict[str, Any]:
        payload = {"model": self.model, "messages": list(messages), "max_tokens": max_new_tokens, "temperature": 0}
        payload.update(self.extra_body)
        payload.update(extra)
        return payload

    def _content(self, answer: dict[str, Any] | None) -> str | None:
        """The answer's message text; ``None``, with a warning, for an answer that has none (a request that got no
        answer was warned about in :meth:`_post`)."""
        try:
            content = answer["choices"][0]["message"]["content"]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            content = None
        if answer is not None and not isinstance(content, str):
            logger.warning("chat request to %s: the answer has no message content", self.base_url)
        return strip_reasoning(content) if isinstance(content, str) else None

    # ---------------------------------------------------------------- ChatBackend
    def complete(self, batch: Sequence[Conversation], max_new_tokens: int) -> list[str | None]:
        return self._map(lambda messages: self._content(self._post(self._payload(messages, max_new_tokens))), batch)

    def _yes_no(self, messages: Conversation) -> tuple[float, float] | None:
        answer = self._post(self._payload(messages, 1, logprobs=True, top_logprobs=self.top_logprobs))
        if answer is None:
            return None
        try:
            top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            pairs = [(str(t["token"]), float(t["logprob"])) for t in top]
        except (KeyError, IndexError, TypeError, ValueError):
            pairs = []
        if pairs:
            yes = [lp for token, lp in pairs if token.strip().lower() == "yes"]
            no = [lp for token, lp in pairs if token.strip().lower() == "no"]
            if yes or no:
                bound = _unlisted_bound(pairs)
                return (logsumexp(yes) if yes else bound, logsumexp(no) if no else bound)
        said = parse_yes_no(self._content(answer))
        if said is None:
            return None
        return (0.0, -math.inf) if said else (-math.inf, 0.0)

    def yes_no_logprobs(self, batch: Sequence[Conversation]) -> list[tuple[float, float] | None]:
        return self._map(self._yes_no, batch)

    def config(self) -> dict[str, Any]:
        """The model and decoding settings (not the URL, which may carry credentials, and never the key)."""
        return {
            "backend": "openai_compatible",
            "model": self.model,
            "decoding": "greedy",
            "top_logprobs": self.top_logprobs,
            "extra_body": self.extra_body,
        }
