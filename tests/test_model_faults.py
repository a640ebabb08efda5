"""A model that fails or answers garbage for a share of its prompts: those decisions become
``ok = false`` with the reason and are counted, retries are bounded, and the failure threshold
stops the run with a clear message (issue: reliability)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine import simulate
from mfray.errors import MfrayError
from mfray.llm import ModelError, ScriptedModel


def kind(prompt: str, fail: float, garbage: float) -> str:
    u = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")
    u /= 2.0**64
    return "fail" if u < fail else "garbage" if u < fail + garbage else "ok"


class FaultyModel:
    """Wraps a model: a share of prompts fail (named in the ModelError), a share get garbage
    scores (NaN, all -inf, or the wrong length), and ``short`` makes every call answer one row
    too few. Every call is logged to ``calls`` (the model lives in another process)."""

    model_id = "faulty"

    def __init__(self, calls: Path, fail: float = 0.0, garbage: float = 0.0,
                 short: bool = False) -> None:
        self.inner, self.calls = ScriptedModel(), str(calls)
        self.fail, self.garbage, self.short = fail, garbage, short

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray | list:
        with open(self.calls, "a") as f:
            f.write(f"{len(prompts)}\n")
        kinds = [kind(p, self.fail, self.garbage) for p in prompts]
        bad = [i for i, k in enumerate(kinds) if k == "fail"]
        if bad:
            raise ModelError("injected failure", indices=bad)
        out: list = list(self.inner.score(prompts, options))
        for i, k in enumerate(kinds):
            if k == "garbage":
                out[i] = [np.array([np.nan] * len(options)), np.full(len(options), -np.inf),
                          np.zeros(len(options) + 1)][i % 3]
        return out[:-1] if self.short else out

    def generate(self, *args, **kw) -> list[str]:
        return self.inner.generate(*args, **kw)

    def close(self) -> None:
        pass


def _cfg(data: Path, rate: float) -> RunConfig:
    return RunConfig(sim=SimConfig(data=str(data), variants=("mf", "recent"), seeds=(0,),
                                   warmup=20, max_failure_rate=rate),
                     policy=PolicyConfig(model="scripted", log_prompts=True),
                     resources=ResourcesConfig(num_cpus=2))


def test_failed_and_garbage_answers_are_counted_not_made_up(small_world_dir: Path,
                                                             tmp_path: Path) -> None:
    model = FaultyModel(tmp_path / "calls", fail=0.08, garbage=0.06)
    store = simulate(_cfg(small_world_dir, 0.9), read_dataset(small_world_dir), tmp_path / "r",
                     progress=False, model=model)
    logged = [json.loads(line) for line in (store.run_dir / "prompts.jsonl").read_text()
              .splitlines()]
    expected = {(k["key"][0], k["key"][1]): kind(k["prompt"], 0.08, 0.06) for k in logged}
    rows = [r for r in store.read_decisions().to_pylist() if not r["is_warmup"]]
    assert len(rows) == len(expected)
    got = {(r["sim_id"], r["agent_index"]): r for r in rows}
    for key, k in expected.items():
        r = got[key]
        assert r["ok"] == (k == "ok"), (k, r["error"])
        if k == "fail":
            assert "injected failure" in r["error"] and r["action"] is None
        elif k == "garbage":
            assert "invalid option scores" in r["error"] and r["action"] is None
        else:
            assert r["error"] is None and abs(sum(r["probs"]["stance"]) - 1) < 1e-9
    n_bad = sum(k != "ok" for k in expected.values())
    assert n_bad > 10 and sum(not r["ok"] for r in rows) == n_bad
    assert sum(r["n_failed"] for r in store.read_rounds().to_pylist()) == n_bad
    # bounded retries: one call per round, plus at most one retry of the prompts not at fault
    calls = [int(x) for x in (tmp_path / "calls").read_text().split()]
    llm_rounds = len({r["round"] for r in rows})
    assert llm_rounds <= len(calls) <= 2 * llm_rounds


def test_too_many_failures_stop_the_run_with_a_clear_message(small_world_dir: Path,
                                                             tmp_path: Path) -> None:
    model = FaultyModel(tmp_path / "calls", fail=0.5)
    with pytest.raises(MfrayError, match=r"model decisions failed .* > sim.max_failure_rate "
                                         r"20%.*injected failure"):
        simulate(_cfg(small_world_dir, 0.2), read_dataset(small_world_dir), tmp_path / "r",
                 progress=False, model=model)
    from mfray.store import RunStore

    info = RunStore.open(tmp_path / "r").run_info()
    assert info["status"] == "failed" and "sim.max_failure_rate" in info["message"]


def test_an_answer_with_rows_missing_fails_the_call_not_the_alignment(small_world_dir: Path,
                                                                      tmp_path: Path) -> None:
    model = FaultyModel(tmp_path / "calls", short=True)
    with pytest.raises(MfrayError, match="answered .* prompts"):
        simulate(_cfg(small_world_dir, 0.5), read_dataset(small_world_dir), tmp_path / "r",
                 progress=False, model=model)
    from mfray.store import RunStore

    rows = RunStore.open(tmp_path / "r").read_decisions().to_pylist()
    rollout = [r for r in rows if not r["is_warmup"]]
    assert rollout and not any(r["ok"] for r in rollout)  # none got a neighbour's scores
