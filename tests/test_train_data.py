"""IB-Tune's training data: the builder's prompts are byte-identical to the simulator's for the
same history, every row carries the template hash, and the mean-field targets are the next
round's real actions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow.compute as pc
import pytest

from mfray.config import MeanFieldConfig, PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine import simulate
from mfray.engine.inference import InferenceServer
from mfray.errors import ConfigError
from mfray.llm import ScriptedModel
from mfray.prompts import template_hash
from mfray.train.data import build_examples, read_examples, rollout_feed, write_examples

WARMUP, B = 32, 16  # the first rollout round (2) sees real actions only: same as teacher forcing


def _cfg(data: Path, variants: tuple[str, ...], mode: str = "choice",
         meanfield_form: str = "shares", tally_size: int = 20) -> RunConfig:
    return RunConfig(sim=SimConfig(data=str(data), variants=variants, seeds=(0,), warmup=WARMUP,
                                   round_size=B, meanfield_form=meanfield_form,
                                   tally_size=tally_size),
                     policy=PolicyConfig(model="scripted", log_prompts=True, mode=mode),
                     meanfield=MeanFieldConfig(max_new_tokens=16),
                     resources=ResourcesConfig(num_shards=2, num_cpus=2))


def _simulated(cfg: RunConfig, out: Path) -> tuple[dict, dict, list]:
    """(role, event, variant, agent, dimension or round) -> logged prompt; decisions; rounds."""
    store = simulate(cfg, read_dataset(cfg.sim.data), out, progress=False, max_rounds=3)
    d = store.read_decisions()
    sims = dict(zip(d["sim_id"].to_pylist(), zip(d["event_id"].to_pylist(),
                                                 d["variant"].to_pylist(), strict=True),
                    strict=True))
    logged: dict = {}
    n_mf: dict = {}
    for line in (out / "prompts.jsonl").read_text().splitlines():
        rec = json.loads(line)
        sim_id, agent, dim = rec["key"]
        event, variant = sims[sim_id]
        if rec["role"] == "meanfield":  # logged once per round, in round order
            r = n_mf[sim_id] = n_mf.get(sim_id, -1) + 1
            logged[("meanfield", event, variant, r)] = rec["prompt"]
        else:
            logged[("policy", event, variant, agent, dim)] = rec["prompt"]
    return logged, d, store.read_rounds().to_pylist()


@pytest.mark.parametrize(("form", "variants"), [
    ("shares", ("state", "recent", "popular", "mf", "mf-hybrid")), ("tally", ("mf",))])
def test_policy_prompts_identical_to_the_simulation(small_world_dir: Path, tmp_path: Path,
                                                    form: str, variants: tuple[str, ...]) -> None:
    cfg = _cfg(small_world_dir, variants, meanfield_form=form, tally_size=32)
    logged, decisions, _ = _simulated(cfg, tmp_path / "run")
    ds = read_dataset(small_world_dir)
    server = InferenceServer(cfg.policy, ds.label_space, model=ScriptedModel())
    compared = 0
    for variant in variants:
        pol, _ = build_examples(cfg, ds, variant, summarize=lambda req: server.summarize(
            req, cfg.meanfield.max_new_tokens, cfg.meanfield.repetition_penalty))
        assert set(pol["template_hash"].to_pylist()) == {template_hash("policy")}
        dims = list(ds.label_space)
        for row in pol.to_pylist():
            if WARMUP <= row["agent_index"] < WARMUP + B:  # the first rollout round
                key = ("policy", row["event_id"], variant, row["agent_index"],
                       dims.index(row["dimension"]))
                assert server.format(row["prompt"]) == logged[key], key
                compared += 1
        # and the warm-up agents, which the simulator never prompts, are examples too
        assert pc.min(pol["agent_index"]).as_py() == 0
        if variant == "mf":  # the form the config names, in training and in simulation
            shown = "32 typical reactions: " if form == "tally" else "%, "
            assert all(shown in p for p in pol["prompt"].to_pylist() if "(n=" in p)
    assert compared == sum(1 for k in logged if k[0] == "policy")
    assert compared > 20
    rollout = decisions.filter(pc.invert(decisions["is_warmup"]))
    assert set(rollout["template_hash"].to_pylist()) == {template_hash("policy")}


def test_onpolicy_examples_show_the_rollouts_own_mean_field(small_world_dir: Path,
                                                           tmp_path: Path) -> None:
    """Fed a complete run's rollout actions, the builder renders every rollout agent's prompt
    byte for byte as that run showed it (the mean field of the simulated history, in every
    round, not only the first), and keeps the real action as the label."""
    cfg = _cfg(small_world_dir, ("mf",), meanfield_form="tally")
    ds = read_dataset(small_world_dir)
    partial = simulate(cfg, ds, tmp_path / "partial", progress=False, max_rounds=3)
    with pytest.raises(ConfigError, match="complete run"):
        rollout_feed(partial.run_dir, "mf")
    store = simulate(cfg, ds, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="no rollout decisions of variant 'recent'"):
        rollout_feed(store.run_dir, "recent")
    feed, ran = rollout_feed(store.run_dir, "mf")
    warmup = ran["warmup"]
    assert warmup == WARMUP
    logged, decisions = {}, store.read_decisions().to_pylist()
    events = {d["sim_id"]: d["event_id"] for d in decisions}
    for line in (tmp_path / "run" / "prompts.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["role"] == "policy":
            sim_id, agent, _ = rec["key"]
            logged[(events[sim_id], agent)] = rec["prompt"]
    server = InferenceServer(cfg.policy, ds.label_space, model=ScriptedModel())
    onpolicy, _ = build_examples(cfg, ds, "mf", from_agent=warmup, feed=feed)
    forced, _ = build_examples(cfg, ds, "mf", from_agent=warmup)
    teacher = {(r["event_id"], r["agent_index"]): r["prompt"] for r in forced.to_pylist()}
    real = {(d["event_id"], d["agent_index"]): d["real"]["stance"] for d in decisions}
    rows = onpolicy.to_pylist()
    assert rows and min(r["agent_index"] for r in rows) >= WARMUP
    assert {(r["event_id"], r["agent_index"]) for r in rows} == \
        {k for k, stance in real.items() if k[1] >= WARMUP and stance is not None}
    for row in rows:
        key = (row["event_id"], row["agent_index"])
        assert server.format(row["prompt"]) == logged[key], key
        assert row["label"] == real[key]
    # the rollout did not copy the real actions: after its first round the mean fields differ
    late = [r for r in rows if r["agent_index"] >= WARMUP + 2 * B]
    changed = sum(r["prompt"] != teacher[(r["event_id"], r["agent_index"])] for r in late)
    assert changed > len(late) // 2
    # training adds them to the teacher-forced examples, and refuses a run of a held-out event
    from mfray.train.config import TrainConfig, TrainParams
    from mfray.train.prepare import prepare_examples

    tcfg = TrainConfig(sim=cfg.sim, policy=cfg.policy,
                       train=TrainParams(onpolicy_runs=(str(store.run_dir),)))
    both = read_examples(prepare_examples(tcfg, ds, tmp_path / "tune", "policy"))
    everything, _ = build_examples(cfg, ds, "mf")
    assert both.num_rows == everything.num_rows + onpolicy.num_rows
    held = replace(tcfg.train, held_out=(rows[0]["event_id"],))
    with pytest.raises(ConfigError, match=f"simulated .*{rows[0]['event_id']}.* not training"):
        prepare_examples(replace(tcfg, train=held), ds, tmp_path / "tune2", "policy")
    with pytest.raises(ConfigError, match="ran with sim.round_size=16, this training has 8"):
        prepare_examples(replace(tcfg, sim=replace(cfg.sim, round_size=8)), ds,
                         tmp_path / "tune4", "policy")
    expected = simulate(replace(cfg, sim=replace(cfg.sim, meanfield_update="expected")), ds,
                        tmp_path / "expected", progress=False)
    with pytest.raises(ConfigError, match="sim.meanfield_update='expected'"):
        prepare_examples(replace(tcfg, train=replace(
            tcfg.train, onpolicy_runs=(str(expected.run_dir),))), ds, tmp_path / "tune5", "policy")
    with pytest.raises(ConfigError, match="show no population"):
        replace(tcfg.train, variant="sft")
    with pytest.raises(ConfigError, match="mix_copies"):
        replace(tcfg.train, mix_copies=2)
    with pytest.raises(ConfigError, match="policy examples"):
        prepare_examples(tcfg, ds, tmp_path / "tune3", "meanfield")


def test_meanfield_prompts_summaries_and_targets(small_world_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(small_world_dir, ("mf-text",))
    logged, _, rounds = _simulated(cfg, tmp_path / "run")
    ds = read_dataset(small_world_dir)
    server = InferenceServer(cfg.policy, ds.label_space, model=ScriptedModel())
    pol, mf = build_examples(cfg, ds, "mf-text", summarize=lambda req: server.summarize(
        req, cfg.meanfield.max_new_tokens, cfg.meanfield.repetition_penalty))
    stored = {(r["event_id"], r["round"]): r["meanfield_text"] for r in rounds}
    rows = mf.to_pylist()
    assert set(mf["template_hash"].to_pylist()) == {template_hash("meanfield")}
    checked = 0
    for row in rows:
        if row["round"] < WARMUP // B:  # rounds of real actions only: the same history
            assert server.format(row["prompt"]) == logged[("meanfield", row["event_id"],
                                                           "mf-text", row["round"])]
            assert row["summary"] == stored[(row["event_id"], row["round"])]
            checked += 1
    assert checked == 2 * len({r["event_id"] for r in rows})
    # the targets are the real actions of the next round, in agent order
    units = {r["event_id"]: r for r in rows if r["round"] == 0}
    posts = ds.posts.filter(pc.is_valid(ds.posts["parent_id"])).to_pylist()
    for event, row in units.items():
        real = [p for p in posts if p["event_id"] == event]
        nxt = row["next_agents"]
        assert [a["agent_index"] for a in nxt] == list(range(B, 2 * B))
        assert [json.loads(a["labels"])["stance"] for a in nxt] == \
            [p["labels"]["stance"] for p in real[B:2 * B]]
        assert row["previous"] is None and row["summary"]
    # the policy prompts of mf-text show the summary written after the previous round
    first = {(r["event_id"], r["agent_index"]): r["prompt"] for r in pol.to_pylist()}
    for row in rows:
        prompt = first.get((row["event_id"], (row["round"] + 1) * B))
        if prompt is not None:
            assert row["summary"] in prompt


def test_text_mode_examples_and_parquet(small_world_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(small_world_dir, ("mf",), mode="text")
    logged, _, _ = _simulated(cfg, tmp_path / "run")
    ds = read_dataset(small_world_dir)
    pol, mf = build_examples(cfg, ds, "mf")
    n_replies = pc.sum(pc.is_valid(ds.posts["parent_id"])).as_py()
    assert mf.num_rows == 0 and pol.num_rows == n_replies  # one example per reply
    assert set(pol["template_hash"].to_pylist()) == {template_hash("policy_text")}
    compared = 0
    for row in pol.to_pylist():
        key = ("policy", row["event_id"], "mf", row["agent_index"], -1)
        if key in logged:
            assert row["prompt"] == logged[key]
            compared += 1
    assert compared == len(logged) > 10
    path = write_examples(pol, tmp_path / "ex" / "policy.parquet")
    assert read_examples(path).equals(pol)


def test_builder_refuses(small_world_dir: Path) -> None:
    cfg = _cfg(small_world_dir, ("mf",))
    ds = read_dataset(small_world_dir)
    with pytest.raises(ConfigError, match="LLM variant"):
        build_examples(cfg, ds, "base-rate")
    with pytest.raises(ConfigError, match="summarize"):
        build_examples(cfg, ds, "mf-text")
