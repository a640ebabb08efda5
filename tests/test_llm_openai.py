"""The OpenAI-compatible policy model against a local server that speaks ``/v1/completions``:
scores by echoed log-probabilities, seeded generation, errors, timeouts, malformed replies,
the API key, and a whole simulation through it."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine import simulate
from mfray.errors import ConfigError
from mfray.llm import LanguageModel, ModelError
from mfray.llm.openai import HTTPClient, OpenAICompatibleModel, option_loglik

SECRET = "sk-policy-secret-77"
TOKEN = re.compile(r"\s*\S+")


def token_logprob(text: str, tok: str) -> float:
    """The fake model: a preferred word (``prefer:<word>`` in the text) is likely, any other
    token costs more the longer it is."""
    m = re.search(r"prefer:(\w+)", text)
    if m and tok.strip() == m.group(1) and not tok.strip().startswith("prefer"):
        return -0.1
    return -1.0 - len(tok.strip()) / 10


def echo_choice(text: str, index: int) -> dict[str, Any]:
    toks = [(m.start(), m.group()) for m in TOKEN.finditer(text)]
    toks.append((len(text), " x"))  # the one generated token
    return {"index": index, "text": text + " x", "logprobs": {
        "tokens": [t for _, t in toks], "text_offset": [o for o, _ in toks],
        "token_logprobs": [None] + [token_logprob(text, t) for _, t in toks[1:]]}}


def digest(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little")


class Completions(BaseHTTPRequestHandler):
    """Commands anywhere in a request's text: ``@fail500`` (first time only), ``@bad400``,
    ``@slow``, ``@malformed``, ``@fewer``, ``@nolp``, ``@nan``; ``Completions.fail_mod`` fails
    (HTTP 400) the prompts whose hash is 0 modulo it."""

    seen: ClassVar[dict[str, int]] = {}
    auth: ClassVar[list[str | None]] = []
    payloads: ClassVar[list[dict[str, Any]]] = []
    refused: ClassVar[set[str]] = set()
    fail_mod: ClassVar[int] = 0
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/completions", self.path
        prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
        joined = "\n".join(prompts)
        cmd = next((c for c in ("@fail500", "@bad400", "@slow", "@malformed", "@fewer", "@nolp",
                          "@nan") if c in joined), "")
        with self.lock:
            Completions.auth.append(self.headers.get("Authorization"))
            Completions.payloads.append(req)
            n = Completions.seen[joined] = Completions.seen.get(joined, 0) + 1
        if self.fail_mod and digest(prompts[0]) % self.fail_mod == 0:
            with self.lock:
                Completions.refused.add(prompts[0])
            return self._send(400, {"error": "refused"})
        if cmd == "@fail500" and n == 1:
            return self._send(500, {"error": "try later"})
        if cmd == "@bad400":
            return self._send(400, {"error": f"bad request, key {self.headers.get('Authorization')}"})
        if cmd == "@slow":
            time.sleep(1.0)
        if cmd == "@malformed":
            return self._send(200, {"choices": "nope"})
        if cmd == "@fewer":
            return self._send(200, {"choices": []})
        if req.get("echo"):
            choices = [echo_choice(p, k) for k, p in enumerate(prompts)]
            if cmd == "@nolp":
                choices[0]["logprobs"] = None
            if cmd == "@nan":
                choices[0]["logprobs"]["token_logprobs"][-2] = 3.0
            return self._send(200, {"choices": choices})
        text = (f"reply seed={req.get('seed')} T={req['temperature']} top_p={req['top_p']} "
                f"top_k={req.get('top_k')} rp={req.get('repetition_penalty')}\nsecond line")
        return self._send(200, {"choices": [{"index": 0, "text": text}]})


@pytest.fixture()
def server() -> Iterator[str]:
    Completions.seen, Completions.auth, Completions.payloads = {}, [], []
    Completions.refused, Completions.fail_mod = set(), 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Completions)  # port 0: a free port
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def model(url: str, **kw: Any) -> OpenAICompatibleModel:
    opts: dict[str, Any] = {"batch_size": 3, "max_retries": 2, "timeout_s": 0.5,
                            "backoff_s": 0.01, "api_key_env": "MFRAY_TEST_KEY"}
    return OpenAICompatibleModel(url, "served-model", **{**opts, **kw})


def test_option_loglik_takes_tokens_overlapping_the_option() -> None:
    # "xy ab" + "cd" tokenised "xy", " abcd" (straddling), then the generated " x"
    choice = {"logprobs": {"text_offset": [0, 2, 7], "token_logprobs": [None, -0.5, -2.0]}}
    assert option_loglik(choice, 5, 7) == -0.5
    choice = {"logprobs": {"text_offset": [0, 3, 7, 12], "token_logprobs": [None, -1, -2, -3]}}
    assert option_loglik(choice, 3, 12) == -3.0  # tokens at 3 and 7; 12 is the generated one


def test_score_by_echoed_logprobs(server: str) -> None:
    m = model(server)
    assert isinstance(m, LanguageModel)
    prompts = ["Topic. prefer:deny\nAnswer:", "Topic. prefer:query\nAnswer:"]
    options = [" support", " deny", " query it"]
    got = m.score(prompts, options)
    for row, prompt in zip(got, prompts, strict=True):
        ll = np.array([sum(token_logprob(prompt + o, t) for t in TOKEN.findall(o))
                       for o in options])
        np.testing.assert_allclose(row, ll - np.logaddexp.reduce(ll), atol=1e-12)
    assert np.argmax(got[0]) == 1 and np.argmax(got[1]) == 2  # multi-token option summed
    # one batched request per 3 strings, echo of the prompt, nothing generated but one token
    assert len(Completions.payloads) == 2
    assert all(p["echo"] and p["max_tokens"] == 1 and p["model"] == "served-model"
               for p in Completions.payloads)
    assert m.score([], options).shape == (0, 3)


def test_score_failures_name_their_prompts(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFRAY_TEST_KEY", SECRET)
    m = model(server, batch_size=2)
    options = [" yes", " no"]
    prompts = ["ok one", "@bad400", "ok two", "@slow", "@malformed", "@fewer", "@fail500", "@nolp",
               "@nan", "ok three"]
    with pytest.raises(ModelError) as info:
        m.score(prompts, options)
    assert info.value.indices == (1, 3, 4, 5, 7, 8)  # fail500 was retried and succeeded
    assert SECRET not in str(info.value)  # bad400 echoes the key; it is scrubbed
    assert set(Completions.auth) == {f"Bearer {SECRET}"}
    rest = [p for k, p in enumerate(prompts) if k not in info.value.indices]
    assert m.score(rest, options).shape == (4, 2)


def test_each_failure_kind_is_reported(server: str) -> None:
    m = model(server, batch_size=2)
    for prompt, words in [("@bad400", "HTTP 400"), ("@slow", "timed out"),
                          ("@malformed", "malformed response"), ("@fewer", "0 choices"),
                          ("@nolp", "no echoed logprobs"), ("@nan", "bad logprob")]:
        with pytest.raises(ModelError, match=words):
            m.score([prompt], [" a", " b"])


def test_generate_seeded_with_the_papers_decoding(server: str) -> None:
    m = model(server)
    texts = m.generate(["a", "b", "c"], max_new_tokens=50, temperature=0.8, top_p=0.85,
                       top_k=50, repetition_penalty=1.2, seeds=[7, 8, 9])
    assert texts == [f"reply seed={s} T=0.8 top_p=0.85 top_k=50 rp=1.2\nsecond line"
                     for s in (7, 8, 9)]
    assert all(p["max_tokens"] == 50 for p in Completions.payloads)
    with pytest.raises(ModelError) as info:
        m.generate(["a", "@bad400", "@slow"], temperature=0.8, seeds=[1, 2, 3])
    assert info.value.indices == (1, 2)
    with pytest.raises(ValueError, match="seeds"):
        m.generate(["a"], temperature=0.8)


def test_unreachable_and_bad_settings() -> None:
    with socket_closed() as url:
        with pytest.raises(ModelError, match="attempts") as info:
            model(url, max_retries=1).score(["x"], [" a", " b"])
        assert info.value.indices == (0,)
    with pytest.raises(ConfigError, match="http"):
        HTTPClient("localhost:8000")
    with pytest.raises(ConfigError, match="concurrency"):
        HTTPClient("http://x", concurrency=0)
    with pytest.raises(ConfigError, match="policy.model"):
        PolicyConfig(url="http://127.0.0.1:1/v1")


class socket_closed:
    """A loopback URL nobody listens on."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc: object) -> None:
        pass


def test_simulation_through_the_endpoint(server: str, small_world_dir: Path,
                                         tmp_path: Path) -> None:
    """A whole run whose policy is served over HTTP; refused prompts are failed decisions."""
    Completions.fail_mod = 9
    opts = ("support", "deny", "query", "comment")
    cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=("state", "mf"),
                                  seeds=(0,), warmup=20, max_failure_rate=0.5),
                    policy=PolicyConfig(model="served-model", url=server, timeout_s=5,
                                        max_retries=1),
                    resources=ResourcesConfig(num_shards=2, num_cpus=2, batch_size=len(opts)))
    store = simulate(cfg, read_dataset(small_world_dir), tmp_path / "run", progress=False)
    rows = [r for r in store.read_decisions().to_pylist() if not r["is_warmup"]]
    failed = [r for r in rows if not r["ok"]]
    assert store.run_info()["model_id"] == "served-model"
    assert failed and len(failed) == len(Completions.refused)  # one request per prompt
    assert all("HTTP 400" in r["error"] and r["action"] is None for r in failed)
    ok = [r for r in rows if r["ok"]]
    assert len(ok) > 5 * len(failed)
    for r in ok:
        assert r["action"]["stance"] in opts and abs(sum(r["probs"]["stance"]) - 1) < 1e-9
