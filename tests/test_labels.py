"""Labellers: zero-shot with a scripted model, the OpenAI-compatible one against a local server,
rules, human labels, and the agreement check."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest

from mfray.data.build import build_dataset
from mfray.data.schema import STANCE_OPTIONS
from mfray.errors import DataError
from mfray.labels import (
    WEIBO_RULES,
    HumanLabeller,
    LabelItem,
    LabelResult,
    OpenAICompatibleLabeller,
    RuleLabeller,
    ZeroShotLabeller,
    format_check,
    human_labels,
    labels_check,
)
from mfray.llm import ScriptedModel

OPTS = STANCE_OPTIONS  # support, deny, query, comment
SECRET = "sk-test-secret-4242"


def item(i: str, text: str, options: tuple[str, ...] = OPTS, dim: str = "stance") -> LabelItem:
    return LabelItem(i, text, "The tower fell today.", dim, options)


def reply_fn(prompt: str, options: Any) -> list[float]:
    """Prefers the option named by the reply's first word (``The reply:`` block)."""
    reply = prompt.split('The reply:\n"', 1)[1].split('"', 1)[0]
    word = reply.split()[0].lower() if reply.split() else ""
    return [10.0 if o.strip() == word else 1.0 for o in options]


# ------------------------------------------------------------------------------- zero-shot


@pytest.mark.parametrize("chat", [False, True])
def test_zero_shot_labels_by_id_whatever_the_order(chat: bool) -> None:
    model = ScriptedModel(reply_fn)
    model.chat_prompt = lambda system, user: f"<sys>{system}</sys>{user}<assistant>\n"  # type: ignore[attr-defined]
    items = [item(f"r:0:{k}", f"{w} it is") for k, w in enumerate(
        ["deny", "support", "query", "comment", "deny", "query"])]
    want = {it.item_id: it.text.split()[0] for it in items}
    lab = ZeroShotLabeller(model, chat=chat, batch_size=4)
    got = lab.label(items)
    assert {k: r.label for k, r in got.items()} == want
    assert all(r.ok and r.error is None for r in got.values())
    reversed_got = lab.label(items[::-1])
    assert reversed_got == got


def test_zero_shot_model_error_fails_only_its_batch() -> None:
    model = ScriptedModel(reply_fn, fail_when=lambda p: "boom" in p)
    items = [item("a", "deny boom"), item("b", "query"), item("c", "support"),
             item("d", "comment")]
    got = ZeroShotLabeller(model, chat=False, batch_size=2).label(items)
    assert not got["a"].ok and not got["b"].ok and got["a"].label is None
    assert "scripted failure" in (got["a"].error or "")
    assert got["c"] == LabelResult("support", True) and got["d"].label == "comment"


def test_zero_shot_rejects_repeated_ids() -> None:
    with pytest.raises(ValueError, match="unique"):
        ZeroShotLabeller(ScriptedModel(), chat=False).label([item("x", "a"), item("x", "b")])


# ------------------------------------------------------------------------------- rules, human


def test_rule_and_human_labellers() -> None:
    beh = ("share", "comment")
    got = RuleLabeller(WEIBO_RULES).label([item("1", "  ", beh, "behaviour"),
                                           item("2", "so sad", beh, "behaviour"),
                                           item("3", "x", OPTS, "stance")])
    assert got["1"].label == "share" and got["2"].label == "comment"
    assert not got["3"].ok and "no rule" in (got["3"].error or "")
    human = HumanLabeller({"1": {"stance": "deny"}, "2": {"stance": None}})
    got = human.label([item("2", "a"), item("1", "b"), item("9", "c")])
    assert got["1"] == LabelResult("deny", True)
    assert not got["2"].ok and not got["9"].ok and got["9"].label is None


# ------------------------------------------------------------------------------- HTTP server


class Handler(BaseHTTPRequestHandler):
    """Answers by the reply text's first word: ``say:<word>``, ``broken``, ``fail500``,
    ``busy429``, ``always429``, ``slow``, ``bad400``, ``echo``, ``truncated``."""

    seen: ClassVar[dict[str, int]] = {}
    auth: ClassVar[list[str | None]] = []
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and req["temperature"] == 0
        user = req["messages"][-1]["content"]
        cmd = user.split('The reply:\n"', 1)[1].split('"', 1)[0]
        with self.lock:
            Handler.auth.append(self.headers.get("Authorization"))
            n = Handler.seen[cmd] = Handler.seen.get(cmd, 0) + 1
        if cmd == "broken":
            return self._send(200, b"{not json")
        if cmd == "truncated":  # promises 100 bytes, sends 10, closes
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"choices"')
            return None
        if cmd == "fail500" and n == 1 or cmd == "busy429" and n == 1 or cmd == "always429":
            return self._send(500 if cmd == "fail500" else 429, b'{"error": "try later"}')
        if cmd == "slow":
            time.sleep(SLOW_S)
        if cmd == "bad400":
            return self._send(400, b'{"error": "bad request"}')
        if cmd == "echo":
            return self._send(400, json.dumps({"got": self.headers.get("Authorization")}).encode())
        word = cmd.split(":", 1)[1] if cmd.startswith("say:") else "support"
        body = {"choices": [{"message": {"role": "assistant", "content": word}}]}
        return self._send(200, json.dumps(body).encode())


@pytest.fixture()
def server() -> Iterator[str]:
    Handler.seen, Handler.auth = {}, []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


SLOW_S = 2.0  # the "slow" reply; the labeller's timeout is below it, with room for a loaded CI


def http_labeller(url: str, **kw: Any) -> OpenAICompatibleLabeller:
    opts: dict[str, Any] = {"batch_size": 8, "max_retries": 2, "timeout_s": 1.2,
                            "backoff_s": 0.01}
    return OpenAICompatibleLabeller(url, "test-model", api_key_env="MFRAY_TEST_KEY",
                                    **{**opts, **kw})


def settled(expected: dict[str, int], within_s: float = 5.0) -> None:
    """Assert the server's arrival counts reach ``expected`` and stay there."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(Handler.seen.get(c) != n
                                              for c, n in expected.items()):
        time.sleep(0.05)
    time.sleep(0.2)  # a late extra arrival would show here
    assert {c: Handler.seen.get(c) for c in expected} == expected


def test_http_labeller_answers_and_failures(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFRAY_TEST_KEY", SECRET)
    cmds = ["say:Deny.", "say:QUERY", "say:comment because", "say:maybe", "broken", "fail500",
            "busy429", "always429", "slow", "bad400", "echo", "truncated"]
    items = [item(f"run:0:{k}", c) for k, c in enumerate(cmds)]
    t0 = time.perf_counter()
    got = http_labeller(server).label(items)
    by_cmd = {c: got[f"run:0:{k}"] for k, c in enumerate(cmds)}
    assert time.perf_counter() - t0 < 15  # "slow": 3 timed-out attempts, in parallel
    assert by_cmd["say:Deny."] == LabelResult("deny", True)
    assert by_cmd["say:QUERY"].label == "query" and by_cmd["say:comment because"].label == "comment"
    assert by_cmd["fail500"].label == "support" and Handler.seen["fail500"] == 2  # retried
    assert by_cmd["busy429"].label == "support" and Handler.seen["busy429"] == 2
    failures = {c: by_cmd[c] for c in ["say:maybe", "broken", "always429", "slow", "bad400",
                                       "echo", "truncated"]}
    for c, r in failures.items():
        assert not r.ok and r.label is None and r.error, c
    assert "'maybe'" in (failures["say:maybe"].error or "")
    assert "malformed" in (failures["broken"].error or "")
    # The server may still be answering a request the client has given up on (a timeout under
    # load), so its counts are read once they have settled.
    settled({"broken": 1, "bad400": 1})  # never retried
    for c in ("always429", "truncated"):  # retried, then given up
        assert "after 3 attempts" in (failures[c].error or ""), c
    assert "429" in (failures["always429"].error or "")
    assert "timed out" in (failures["slow"].error or "")
    assert "HTTP 400" in (failures["bad400"].error or "")
    assert set(Handler.auth) == {f"Bearer {SECRET}"}
    assert all(SECRET not in repr(r) for r in got.values())  # even when the server echoes it


def test_http_labeller_without_key_and_rate_limit(server: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MFRAY_TEST_KEY", raising=False)
    items = [item(str(k), "say:support") for k in range(5)]
    t0 = time.perf_counter()
    got = http_labeller(server, requests_per_s=20).label(items)
    assert time.perf_counter() - t0 >= 4 / 20 - 0.01  # 5 starts, 0.05 s apart
    assert all(r.label == "support" for r in got.values()) and set(got) == {"0", "1", "2", "3", "4"}
    assert Handler.auth == [None] * 5


def test_http_labeller_unreachable_server() -> None:
    got = http_labeller(f"http://127.0.0.1:{free_port()}", max_retries=1).label([item("a", "x")])
    assert not got["a"].ok and "attempts" in (got["a"].error or "")


def free_port() -> int:
    """A port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- check


def tiny_dataset() -> Any:
    events = [{"event_id": "e1", "topic": "t", "topic_origin": "given", "source": "test"},
              {"event_id": "e2", "topic": "u", "topic_origin": "given", "source": "test"}]
    truth = ["support", "deny", "deny", "query", "comment", "comment"]
    posts = [{"event_id": "e1", "thread_id": "s1", "post_id": "s1", "time": 0,
              "text": "Source", "labels": {"stance": "support"}}]
    posts += [{"event_id": "e1", "thread_id": "s1", "post_id": f"p{k}", "parent_id": "s1",
               "time": k + 1, "text": f"{lab} text", "labels": {"stance": lab}}
              for k, lab in enumerate(truth)]
    posts += [{"event_id": "e2", "thread_id": "s2", "post_id": "s2", "time": 0, "text": "x"},
              {"event_id": "e2", "thread_id": "s2", "post_id": "q1", "parent_id": "s2",
               "time": 5, "text": "deny", "labels": {"stance": "deny"}}]
    return build_dataset("tiny", {"stance": OPTS}, events, posts)


class FixedLabeller:
    """The reply text's first word, except p1 and p5 (wrong) and p3 (failed)."""

    def label(self, items: Any) -> dict[str, LabelResult]:
        wrong = {"p1": "support", "p5": "query"}
        out = {}
        for it in items:
            if it.item_id == "p3":
                out[it.item_id] = LabelResult(None, False, "nope")
            else:
                out[it.item_id] = LabelResult(wrong.get(it.item_id, it.text.split()[0]), True)
        return out


def test_labels_check_figures() -> None:
    ds = tiny_dataset()
    res = labels_check(ds, FixedLabeller(), events=["e1"])
    # truth: p0 support, p1 deny, p2 deny, p3 query, p4 comment, p5 comment (source excluded)
    # pred : support, support, deny, failed, comment, query -> 3 of 6 right
    assert res["n"] == 6 and res["n_failed"] == 1
    assert res["accuracy"] == pytest.approx(3 / 6)
    f1 = {"support": 2 * 1 / (2 + 1), "deny": 2 / (2 + 1), "query": 0.0, "comment": 2 / 3}
    assert res["macro_f1"] == pytest.approx(np.mean(list(f1.values())))
    assert res["counts"]["deny"] == {"human": 2, "predicted": 1}
    assert res["confusion"][OPTS.index("query")] == [0, 0, 0, 0, 1]  # the failed column
    assert res["confusion"][OPTS.index("comment")] == [0, 0, 1, 1, 0]
    table = format_check(res)
    assert "accuracy = 0.500" in table and "error: nope" in table
    perfect = labels_check(ds, HumanLabeller(human_labels(ds)))
    assert perfect["n"] == 7 and perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    with pytest.raises(DataError, match="unknown events"):
        labels_check(ds, FixedLabeller(), events=["nope"])
    with pytest.raises(DataError, match="behaviour"):
        labels_check(ds, FixedLabeller(), dimension="behaviour")
