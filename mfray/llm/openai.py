"""OpenAI-compatible HTTP endpoints (vLLM serve, SGLang, a hosted API), standard library only.

:class:`HTTPClient` posts JSON with the rules every caller needs: the API key from an
environment variable only (no header when unset), scrubbed from every error text; connection
errors, timeouts, HTTP 429 and 5xx retried with exponential backoff; other HTTP errors fail at
once; a shared rate limit on request starts; ``concurrency`` requests in flight.

:class:`OpenAICompatibleModel` is a :class:`~mfray.llm.base.LanguageModel` over ``/completions``:

- ``score``: every ``prompt + option`` string in one batched request per ``batch_size``
  strings, with ``echo: true, logprobs: 1, max_tokens: 1``; an option's log-likelihood is the
  sum of the echoed log-probabilities of the tokens that overlap its characters (the generated
  token is ignored), normalised over the options as the local model does.
- ``generate``: one request per prompt (each has its own ``seed``), concurrently, with the
  paper's decoding sent as ``temperature, top_p, top_k, repetition_penalty`` (vLLM and SGLang
  read the last two; a hosted API may ignore them).

Prompts are sent as raw text: the endpoint's chat template is not applied. A prompt whose
request fails after the retries, or whose response is malformed, is named in the
:class:`~mfray.llm.base.ModelError` (``indices``) so the engine records only those decisions as
``ok = false``; nothing is ever filled in.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from mfray.errors import ConfigError
from mfray.llm.base import ModelError, check_options, check_sampling

T = TypeVar("T")
R = TypeVar("R")


class Transient(Exception):
    """A failure worth retrying (connection, timeout, HTTP 429 / 5xx)."""


class RequestFailed(Exception):
    """A definitive failure of one request (HTTP 4xx, retries exhausted, malformed reply);
    its text never holds the API key."""


class HTTPClient:
    """POST JSON to ``{base_url}/{path}`` with retries, a rate limit and the key from the
    environment (see the module docstring)."""

    def __init__(self, base_url: str, *, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 16, max_retries: int = 3, timeout_s: float = 30,
                 requests_per_s: float | None = None, backoff_s: float = 0.5) -> None:
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0 \
                or (requests_per_s is not None and requests_per_s <= 0):
            raise ConfigError("need concurrency >= 1, max_retries >= 0, timeout_s > 0, "
                              "backoff_s >= 0 and requests_per_s > 0 (or None)")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"the endpoint URL must start with http:// or https://, "
                              f"got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency, self.max_retries, self.timeout_s = concurrency, max_retries, timeout_s
        self.backoff_s = backoff_s
        self.min_interval = 1.0 / requests_per_s if requests_per_s else 0.0
        self._lock = threading.Lock()
        self._next_start = 0.0

    def key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def scrub(self, text: str) -> str:
        """Never let the API key reach a result (a server may echo the request)."""
        key = self.key()
        return text.replace(key, "***") if key else text

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items``, ``concurrency`` at a time, results in order."""
        if len(items) <= 1:
            return [fn(it) for it in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        """The decoded JSON reply, after retries; :class:`RequestFailed` otherwise."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        key = self.key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                raw = self._post_once(url, body, headers)
            except Transient as exc:
                last = str(exc)
                continue
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise RequestFailed(self.scrub(f"malformed response ({exc}): {raw[:200]!r}")
                                    ) from None
        raise RequestFailed(self.scrub(f"gave up after {self.max_retries + 1} attempts: {last}"))

    def _wait_turn(self) -> None:
        """The rate limit: each request starts at least ``min_interval`` after the previous."""
        if not self.min_interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self.min_interval
        time.sleep(max(0.0, start - now))

    def _post_once(self, url: str, body: bytes, headers: dict[str, str]) -> bytes:
        self._wait_turn()
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace")
            msg = f"HTTP {exc.code} from {url}: {detail}"
            if exc.code == 429 or exc.code >= 500:
                raise Transient(msg) from exc
            raise RequestFailed(self.scrub(msg)) from None
        except TimeoutError as exc:  # socket.timeout is an alias since 3.10
            raise Transient(f"timed out after {self.timeout_s} s ({url})") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise Transient(f"timed out after {self.timeout_s} s ({url})") from exc
            raise Transient(f"cannot reach {url}: {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:  # reset, truncated response
            raise Transient(f"connection error with {url}: {exc}") from exc


def _malformed(reply: Any, why: str) -> RequestFailed:
    return RequestFailed(f"malformed response ({why}): {str(reply)[:200]!r}")


def _choices(reply: Any, n: int) -> list[dict[str, Any]]:
    """``reply["choices"]`` ordered by ``index``, checked to hold exactly ``n``."""
    try:
        choices = sorted(reply["choices"], key=lambda c: int(c.get("index", 0)))
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise _malformed(reply, f"no choices: {exc}") from None
    if len(choices) != n or [int(c.get("index", k)) for k, c in enumerate(choices)] != list(range(n)):
        raise _malformed(reply, f"{len(choices)} choices for {n} prompts")
    return choices


def option_loglik(choice: dict[str, Any], prompt_len: int, text_len: int) -> float:
    """Sum of the echoed log-probabilities of the tokens overlapping characters
    ``[prompt_len, text_len)`` of the echoed text (tokens are spans between offsets)."""
    try:
        lp = choice["logprobs"]
        offsets, values = list(lp["text_offset"]), list(lp["token_logprobs"])
    except (TypeError, KeyError) as exc:
        raise _malformed(choice, f"no echoed logprobs: {exc}") from None
    if len(offsets) != len(values) or not offsets:
        raise _malformed(choice, "text_offset and token_logprobs differ in length")
    ends = [*offsets[1:], max(text_len, offsets[-1] + 1)]
    total, used = 0.0, 0
    for start, end, v in zip(offsets, ends, values, strict=True):
        if end > prompt_len and start < text_len:
            if not isinstance(v, int | float) or not math.isfinite(v) or v > 1e-6:
                raise _malformed(choice, f"bad logprob {v!r}")
            total += float(v)
            used += 1
    if not used:
        raise _malformed(choice, "no echoed token covers the option")
    return total


class OpenAICompatibleModel:
    """A :class:`~mfray.llm.base.LanguageModel` served over HTTP (module docstring)."""

    def __init__(self, base_url: str, model: str, *, batch_size: int = 16,
                 client: HTTPClient | None = None, **client_kw: Any) -> None:
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        self.client = client or HTTPClient(base_url, **client_kw)
        self.model_id = model
        self.batch_size = batch_size

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        check_options(options)
        texts = [(i, p + o, len(p)) for i, p in enumerate(prompts) for o in options]
        batches = [texts[k:k + self.batch_size] for k in range(0, len(texts), self.batch_size)]
        results = self.client.map(self._score_batch, batches)
        ll = np.full(len(texts), np.nan)
        failed: dict[int, str] = {}
        pos = 0
        for batch, res in zip(batches, results, strict=True):
            if isinstance(res, str):
                failed.update(dict.fromkeys((i for i, _, _ in batch), res))
            else:
                ll[pos:pos + len(batch)] = res
            pos += len(batch)
        if failed:
            first = next(iter(failed.values()))
            raise ModelError(f"{self.model_id}: {len(failed)} of {len(prompts)} prompts failed: "
                             f"{first}", indices=sorted(failed))
        ll = ll.reshape(len(prompts), len(options)) if prompts else np.zeros((0, len(options)))
        return ll - np.logaddexp.reduce(ll, axis=1, keepdims=True) if prompts else ll

    def _score_batch(self, batch: list[tuple[int, str, int]]) -> list[float] | str:
        """Log-likelihoods of one request's strings, or the error text."""
        payload = {"model": self.model_id, "prompt": [t for _, t, _ in batch], "echo": True,
                   "logprobs": 1, "max_tokens": 1, "temperature": 0}
        try:
            choices = _choices(self.client.post("completions", payload), len(batch))
            return [option_loglik(c, plen, len(t))
                    for c, (_, t, plen) in zip(choices, batch, strict=True)]
        except RequestFailed as exc:
            return self.client.scrub(str(exc))

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 repetition_penalty: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[str]:
        seeds = check_sampling(len(prompts), max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, top_k=top_k,
                               repetition_penalty=repetition_penalty, seeds=seeds)
        base = {"model": self.model_id, "max_tokens": max_new_tokens, "temperature": temperature,
                "top_p": top_p, "repetition_penalty": repetition_penalty}
        if top_k:
            base["top_k"] = top_k

        def one(k: int) -> str | RequestFailed:
            try:
                reply = self.client.post("completions", {**base, "prompt": prompts[k],
                                                         "seed": seeds[k]})
                text = _choices(reply, 1)[0].get("text")
                if not isinstance(text, str):
                    raise _malformed(reply, "choices[0].text is not a string")
                return text
            except RequestFailed as exc:
                return RequestFailed(self.client.scrub(str(exc)))

        out = self.client.map(one, range(len(prompts)))
        failed = [k for k, t in enumerate(out) if isinstance(t, RequestFailed)]
        if failed:
            raise ModelError(f"{self.model_id}: {len(failed)} of {len(prompts)} generations "
                             f"failed: {out[failed[0]]}", indices=failed)
        return [str(t) for t in out]

    def close(self) -> None:
        """Nothing to release: the server holds the model."""
