from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfray.bench import bench_model, bench_scripted, format_model_bench
from mfray.errors import MfrayError


def test_scripted_bench_reports_consistent_figures(tmp_path: Path) -> None:
    r = bench_scripted(simulations=12, agents=60, warmup=20, workdir=tmp_path)
    assert r["decisions"] == 12 * 60
    assert r["model_decisions"] == 12 * (60 - 20)
    assert r["decisions_per_s"] >= r["decisions_per_s_incl_startup"] > 0
    assert 0 < r["peak_memory_gib"] < 16


def test_distilled_bench_in_waves_on_a_given_world(tmp_path: Path) -> None:
    """The distilled workload (issue 42): a fast policy's run, in two waves, on a world made
    beforehand; every agent decides once, and a world of another size is refused."""
    import numpy as np
    from scipy.special import softmax

    from mfray.cli import main
    from mfray.llm.distill import DistilledModel, fit_distilled

    options = ("support", "deny", "query", "comment")
    prompts = [f"persona {w} and a line comment {p}%" for w in "abcd" for p in range(0, 100, 9)]
    probs = softmax(np.random.default_rng(0).normal(size=(len(prompts), 4)), axis=1)
    model, report = fit_distilled(prompts, probs, options)
    (tmp_path / "student").mkdir()
    DistilledModel([model]).save(tmp_path / "student" / "distilled.json", report)
    assert main(["data", "synth", "--out", str(tmp_path / "w"), "--events", "6",
                 "--min-agents", "60", "--max-agents", "60", "--warmup", "20"]) == 0
    r = bench_scripted(simulations=6, agents=60, warmup=20, workdir=tmp_path / "b",
                       model=str(tmp_path / "student"), data=tmp_path / "w", wave_agents=200)
    assert r["workload"] == "distilled" and r["model"] == str(tmp_path / "student")
    assert r["decisions"] == r["distinct_agents"] == 6 * 60
    assert r["model_decisions"] == 6 * (60 - 20)
    assert r["rounds"] == 2 * 4  # two waves of three simulations, 4 rounds each
    with pytest.raises(MfrayError, match="is not a world of 7 events of 60 agents"):
        bench_scripted(simulations=7, agents=60, workdir=tmp_path / "c", data=tmp_path / "w")


def test_model_bench_curve_efficiency_and_simple_way(tmp_path: Path,
                                                     tiny_model_dir: Path) -> None:
    r = bench_model(str(tiny_model_dir), simulations=(1, 3), agents=32, batch_size=16,
                    bf16="off", simple_sample=32, workdir=tmp_path, max_batch_tokens=4096)
    assert [p["simulations"] for p in r["points"]] == [1, 3]
    assert r["max_batch_tokens"] == 4096  # and the simulations ran with it
    run_cfg = json.loads((Path(r["points"][0]["run_dir"]) / "config.json").read_text())
    assert run_cfg["resources"]["max_batch_tokens"] == 4096
    for p in r["points"]:
        assert p["decisions"] == p["simulations"] * 32  # no warm-up: all model decisions
        e2e = p["decisions"] / p["round_loop_s"]
        # round_loop_s is rounded to the millisecond, which a short loop's rate feels
        assert abs(p["end_to_end_decisions_per_s"] - e2e) <= e2e * 0.0006 / p["round_loop_s"] + 0.01
        assert abs(p["efficiency"] - e2e / p["plain_model_decisions_per_s"]) < 0.01 * e2e + 0.01
        assert 0 < p["model_share_of_round_time"] <= 1
        assert abs(p["model_share_of_round_time"] + p["orchestration_share_of_round_time"]
                   - 1) < 1e-6
        # agents of a simulation share the prompt up to their own persona and context
        assert 30 < p["mean_shared_prefix_tokens"] < p["mean_prompt_tokens"]
    assert r["simple_way_decisions_per_s"] > 0
    assert abs(r["speedup_vs_simple_way"] - r["points"][-1]["end_to_end_decisions_per_s"]
               / r["simple_way_decisions_per_s"]) < 0.02 * r["speedup_vs_simple_way"] + 0.01
    text = format_model_bench(r)
    assert text.count("\n| ") == 3 and "simple way" in text  # header + one row per point


STAND_IN = '''import sys
d, f, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
assert (__import__("pathlib").Path(d) / f).is_file(), (d, f)
if rounds == 99:
    sys.exit("out of memory")
print(f"reference-style loop: {16 * rounds} decisions in 8.0s = {2 * rounds / 1.0:.2f} decisions/s")
'''


def test_reference_loop_side_by_side(tmp_path: Path) -> None:
    """The authors' loop runs as a child process on the same GGUF file; its printed rate and
    mfray's speed-up at the largest point come back, and failures say why."""
    from mfray.bench import reference_loop, side_by_side
    from mfray.errors import MfrayError

    script = tmp_path / "reference_loop.py"
    script.write_text(STAND_IN)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    ref = reference_loop(script, str(gguf), rounds=3)  # the stand-in prints 6.00 decisions/s
    assert ref["decisions_per_s"] == 6.0 and ref["rounds"] == 3
    result = {"model": "m", "mode": "choice", "bf16": "off", "batch_size": 16,
              "max_batch_tokens": 4096, "simple_way_decisions_per_s": 1.0,
              "speedup_vs_simple_way": 30.0,
              "points": [{"simulations": s, "decisions": 16 * s, "end_to_end_decisions_per_s": r,
                          "prompt_tokens_per_s": 1, "model_share_of_round_time": 1.0,
                          "plain_model_decisions_per_s": r, "efficiency": 1.0}
                         for s, r in ((1, 3.0), (100, 30.0))]}
    both = side_by_side(result, ref)
    assert both["speedup_vs_reference_loop"] == 5.0  # the largest point's 30 over 6
    assert "is 5.0x that" in format_model_bench(both)
    with pytest.raises(MfrayError, match="out of memory"):
        reference_loop(script, str(gguf), rounds=99)
    with pytest.raises(MfrayError, match="loads a .gguf file"):
        reference_loop(script, str(tmp_path), rounds=1)
    with pytest.raises(MfrayError, match="no reference loop"):
        reference_loop(tmp_path / "missing.py", str(gguf))
