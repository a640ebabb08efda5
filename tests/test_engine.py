"""The round loop on Ray: counts, warm-up, seeding, shard invariance, resume, failures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset, write_dataset
from mfray.data.synthetic import WorldParams, generate
from mfray.engine import plan, simulate
from mfray.errors import ConfigError, MfrayError, StoreError
from mfray.evaluate.report import evaluate
from mfray.llm import ScriptedModel
from mfray.store import RunStore

FREE = ("oracle", "bayes", "surrogate-mf", "surrogate-state", "persistence", "base-rate",
        "crowd")
LLM = ("state", "recent", "popular", "mf")
VOLATILE = ("run_id", "latency_s")


def _cfg(data: Path, shards: int = 1, model: str | None = "scripted", **kw) -> RunConfig:
    sim = {"data": str(data), "variants": FREE, "seeds": (0, 1), "round_size": 16,
           "warmup": 20} | kw
    return RunConfig(sim=SimConfig(**sim), policy=PolicyConfig(model=model),
                     resources=ResourcesConfig(num_shards=shards, num_cpus=2))


def _stable(table):
    return table.drop_columns([c for c in VOLATILE if c in table.column_names]).to_pylist()


def _run(cfg: RunConfig, out: Path, **kw) -> RunStore:
    return simulate(cfg, read_dataset(cfg.sim.data), out, progress=False, **kw)


def test_every_agent_decides_once(small_world_dir: Path, tmp_path: Path) -> None:
    ds = read_dataset(small_world_dir)
    store = _run(_cfg(small_world_dir), tmp_path / "run")
    d = store.read_decisions()
    n_replies = pc.sum(pc.is_valid(ds.posts["parent_id"])).as_py()
    assert d.num_rows == n_replies * len(FREE) * 2
    keys = set(zip(d["sim_id"].to_pylist(), d["agent_index"].to_pylist(), strict=True))
    assert len(keys) == d.num_rows
    assert store.run_info()["status"] == "complete"
    assert store.run_info()["model_id"] == "none"  # model-free variants start no model


def test_warmup_acts_real_and_rollout_samples(small_world_dir: Path, tmp_path: Path) -> None:
    rows = _run(_cfg(small_world_dir), tmp_path / "r").read_decisions().to_pylist()
    warm = [r for r in rows if r["is_warmup"]]
    roll = [r for r in rows if not r["is_warmup"]]
    assert all(r["agent_index"] < 20 for r in warm) and all(r["agent_index"] >= 20 for r in roll)
    assert all(r["action"] == r["real"] and r["probs"] is None for r in warm)
    for r in roll:
        p = np.asarray(r["probs"]["stance"])
        assert p.shape == (4,) and abs(p.sum() - 1) < 1e-9
        assert r["nll"] is not None and r["nll"] >= 0
    assert {r["round"] for r in warm} == {0, 1}  # W = 20 straddles round 1


def test_common_random_numbers_across_variants(small_world_dir: Path, tmp_path: Path) -> None:
    """Twin simulations share their draws: identical probabilities give identical actions."""
    cfg = _cfg(small_world_dir, variants=("base-rate", "persistence"), seeds=(0,))
    rows = _run(cfg, tmp_path / "r").read_decisions().to_pylist()
    by_agent: dict = {}
    for r in rows:
        if not r["is_warmup"]:
            by_agent.setdefault((r["event_id"], r["agent_index"]), []).append(r)
    pairs = list(by_agent.values())
    assert any(a["probs"] != b["probs"] for a, b in pairs)
    for a, b in pairs:
        if a["probs"] == b["probs"]:
            assert a["action"] == b["action"]


def test_bayes_reads_the_world_rule_under_the_warm_ups_posterior(small_world_dir: Path,
                                                                   tmp_path: Path) -> None:
    """Each rollout agent of ``bayes`` gets the world's rule averaged over the posterior of
    the event latent given the warm-up agents, with the simulated mean field of the round
    before; a thread unit is refused (its agents did not see their own thread's shares)."""
    from mfray.data.schema import STANCE_OPTIONS
    from mfray.data.synthetic import SyntheticWorld
    from mfray.schedule import build_units

    cfg = _cfg(small_world_dir, variants=("bayes",), seeds=(0,))
    store = _run(cfg, tmp_path / "r")
    ds = read_dataset(small_world_dir)
    world = SyntheticWorld.from_dataset(ds)
    rounds = {(r["sim_id"], r["round"]): r for r in store.read_rounds().to_pylist()}
    rows = store.read_decisions().to_pylist()
    for unit in build_units(ds, cfg.sim):
        x = np.stack([world.features(p) for p in unit.agents["profile"].to_pylist()])
        y = np.array([STANCE_OPTIONS.index(lab["stance"])
                      for lab in unit.agents["labels"].to_pylist()])
        latent = world.latent_posterior(x[:20], y[:20])
        mine = [r for r in rows if r["event_id"] == unit.event_id and not r["is_warmup"]]
        assert len(mine) == unit.n_agents - 20
        for r in mine:
            shares = rounds[r["sim_id"], r["round"] - 1]["meanfield_shares"]["stance"]
            want = world.predictive(latent, x[r["agent_index"]][None], np.asarray(shares))[0]
            np.testing.assert_allclose(r["probs"]["stance"], want, rtol=1e-12)
    with pytest.raises(ConfigError, match="sim.unit = event"):
        _run(_cfg(small_world_dir, variants=("bayes",), seeds=(0,), unit="thread"),
             tmp_path / "thread")


def _forecast(ref: dict, n: float, shares: np.ndarray) -> np.ndarray:
    """The shift-robust crowd forecast from a references row, written out: P(like training)
    · (n · shares + k · base rate) / (n + k) + the rest · the add-one mix of the n decisions."""
    like, k, base = ref["like_training"], ref["crowd_prior"], np.asarray(ref["probs"])
    h1 = base if np.isinf(k) or n == 0 else (n * shares + k * base) / (n + k)
    return like * h1 + (1 - like) * (n * shares + 1) / (n + len(base))


def test_crowd_follows_the_simulated_mean_field(small_world_dir: Path, tmp_path: Path) -> None:
    """Each rollout round, ``crowd`` gives the shift-robust forecast: (n · shares + k · base
    rate) / (n + k) if the event is like the training events, the add-one mix of its n
    decisions if not, mixed by P(like | warm-up); the mean field is the round before's (the
    rollout's own draws included), k fitted on the other events."""
    from mfray.baselines import crowd_fit_events, crowd_priors
    from mfray.schedule import build_units

    cfg = _cfg(small_world_dir, variants=("crowd", "base-rate", "persistence"), seeds=(0, 1))
    store = _run(cfg, tmp_path / "r")
    ds = read_dataset(small_world_dir)
    labels = {u.event_id: u.agents["labels"].to_pylist()
              for u in build_units(ds, replace(cfg.sim, events=()))}
    rounds = {(r["sim_id"], r["round"]): r for r in store.read_rounds().to_pylist()}
    rows = [r for r in store.read_decisions().to_pylist() if not r["is_warmup"]]
    base = {r["event_id"]: r["probs"]["stance"] for r in rows if r["variant"] == "base-rate"}
    prior = {e: crowd_priors(crowd_fit_events(e, labels, cfg.sim), labels, ds.label_space,
                             cfg.sim)["stance"] for e in base}
    assert all(0 <= k < np.inf for k in prior.values())  # the world herds: the crowd pays
    refs = {(r["event_id"], r["variant"]): r for r in store.read_references().to_pylist()}
    checked = set()
    for r in (r for r in rows if r["variant"] == "crowd"):
        n = sum(sum(rounds[r["sim_id"], t]["counts"]["stance"]) for t in range(r["round"]))
        shares = np.asarray(rounds[r["sim_id"], r["round"] - 1]["meanfield_shares"]["stance"])
        want = _forecast(refs[r["event_id"], "crowd"], n, shares)
        np.testing.assert_allclose(r["probs"]["stance"], want, rtol=1e-12)
        checked.add((r["event_id"], tuple(np.round(want, 12))))
    assert len(checked) > 2 * len(base)  # the distribution moves from round to round
    # the run records the fits: one row per event and reference, whatever the seeds
    assert len(refs) == 3 * len(base) == store.read_references().num_rows
    for e, base_probs in base.items():
        crowd_row, base_row, pers = (refs[e, v] for v in ("crowd", "base-rate", "persistence"))
        assert crowd_row["crowd_prior"] == prior[e] and crowd_row["n_fit_events"] == len(base) - 1
        assert crowd_row["probs"] == base_row["probs"] == base_probs
        assert base_row["crowd_prior"] is None and base_row["persistence_weight"] is None
        assert base_row["n_train_events"] == len(base) - 1 and base_row["options"][1] == "deny"
        got = {tuple(r["probs"]["stance"]) for r in rows
               if r["variant"] == "persistence" and r["event_id"] == e}
        assert got == {tuple(pers["probs"])}  # what every rollout agent got
        w, like = pers["persistence_weight"], pers["like_training"]
        assert 0 < like < 1 and like == crowd_row["like_training"]
        assert base_row["like_training"] is None
        warm = [x["stance"] for x in labels[e][:cfg.sim.warmup] if x["stance"]]
        c = np.array([warm.count(o) for o in base_row["options"]])
        fitted = w * c / c.sum() + (1 - w) * np.asarray(base_probs)
        np.testing.assert_allclose(pers["probs"], like * fitted + (1 - like) * (c + 1)
                                   / (c.sum() + len(c)), atol=1e-5)


def test_mf_cal_rounds_follow_the_crowd_forecast(small_world_dir: Path, tmp_path: Path) -> None:
    """``mf-cal``: each round, its agents' probabilities keep the model's odds between agents
    but average to the shift-robust crowd forecast of the simulation's mean field."""
    store = _run(_cfg(small_world_dir, variants=("mf-cal", "mf"), seeds=(0,)), tmp_path / "r")
    refs = {r["event_id"]: r for r in store.read_references().to_pylist()}
    assert {r["variant"] for r in refs.values()} == {"mf-cal"}
    rounds = {(r["sim_id"], r["round"]): r for r in store.read_rounds().to_pylist()}
    rows = [r for r in store.read_decisions().to_pylist() if not r["is_warmup"] and r["ok"]]
    by_round: dict = {}
    for r in rows:
        by_round.setdefault((r["variant"], r["sim_id"], r["round"]), []).append(r)
    checked = 0
    for (name, sim_id, t), group in by_round.items():
        probs = np.array([r["probs"]["stance"] for r in group])
        if name != "mf-cal":
            continue
        n = sum(sum(rounds[sim_id, u]["counts"]["stance"]) for u in range(t))
        shares = np.asarray(rounds[sim_id, t - 1]["meanfield_shares"]["stance"])
        want = _forecast(refs[group[0]["event_id"]], n, shares)
        np.testing.assert_allclose(probs.mean(axis=0), want, atol=1e-8)
        # its decisions add their distributions to the mean field, not their draws
        before = shares * n
        after = np.asarray(rounds[sim_id, t]["meanfield_shares"]["stance"]) * (n + len(group))
        if rounds[sim_id, t]["n_warmup"] == 0 and rounds[sim_id, t]["n_failed"] == 0:
            np.testing.assert_allclose(after - before, probs.sum(axis=0), atol=1e-6)
        checked += 1
        if len(group) > 1:  # not one distribution for all: the model still tells agents apart
            assert np.ptp(probs, axis=0).max() > 1e-3
    assert checked > 3


def test_expected_update_counts_each_rollout_distribution(small_world_dir: Path,
                                                         tmp_path: Path) -> None:
    """``sim.meanfield_update = "expected"``: after each round the mean field holds the real
    labels of the warm-up and the action distributions of the rollout (crowd, surrogate-mf and
    the model's mf alike), and the run is the same on 1 and 4 shards."""
    kw = {"variants": ("crowd", "surrogate-mf", "mf"), "seeds": (0,),
          "meanfield_update": "expected"}
    runs = [_run(_cfg(small_world_dir, shards=s, **kw), tmp_path / f"s{s}") for s in (1, 4)]
    rows = runs[0].read_decisions().to_pylist()
    assert _stable(runs[0].read_decisions()) == _stable(runs[1].read_decisions())
    options = ("support", "deny", "query", "comment")
    added: dict = {}
    for r in rows:
        one = (np.asarray(r["probs"]["stance"]) if not r["is_warmup"] else
               np.eye(4)[options.index(r["real"]["stance"])] if r["real"]["stance"]
               else np.zeros(4))
        key = (r["sim_id"], r["round"])
        added[key] = added.get(key, np.zeros(4)) + one
    total: dict = {}
    for r in sorted(runs[0].read_rounds().to_pylist(), key=lambda r: (r["sim_id"], r["round"])):
        total[r["sim_id"]] = total.get(r["sim_id"], np.zeros(4)) + added[r["sim_id"], r["round"]]
        np.testing.assert_allclose(r["meanfield_shares"]["stance"],
                                   total[r["sim_id"]] / total[r["sim_id"]].sum(), atol=1e-8)
        assert f"(n={round(total[r['sim_id']].sum())})" in r["meanfield_text"]
    assert any(not float(c).is_integer() for t in total.values() for c in t)


def test_llm_variants_with_the_scripted_model(small_world_dir: Path, tmp_path: Path) -> None:
    store = _run(_cfg(small_world_dir, variants=LLM, seeds=(0,)), tmp_path / "r")
    d = store.read_decisions().to_pylist()
    roll = [r for r in d if not r["is_warmup"]]
    assert roll and all(r["template_hash"] and r["ok"] and r["probs"] for r in roll)
    assert all(r["template_hash"] is None for r in d if r["is_warmup"])
    assert store.run_info()["model_id"] == "scripted"
    # different variants see different prompts, so their (hash-based) scores differ
    by_variant = {v: [r["probs"]["stance"] for r in roll if r["variant"] == v] for v in LLM}
    assert by_variant["state"] != by_variant["mf"]


@pytest.mark.parametrize("model", ["scripted", "tiny-hf"])
def test_one_shard_equals_four_shards_bit_for_bit(model: str, small_world_dir: Path,
                                                  tmp_path: Path, request) -> None:
    variants = (*LLM, "mf-cal", "surrogate-mf", "bayes", "persistence", "crowd")
    kw = {"variants": variants, "seeds": (0,)}
    injected = request.getfixturevalue("tiny_hf") if model == "tiny-hf" else None
    if injected is not None:  # a tiny model: fewer agents keep the test fast
        kw["events"] = ("synth-00",)
    runs = [_run(_cfg(small_world_dir, shards=s, **kw), tmp_path / f"s{s}", model=injected)
            for s in (1, 4)]
    one, four = (_stable(r.read_decisions()) for r in runs)
    assert len(one) > 0 and one == four
    rounds = [r.read_rounds(columns=["sim_id", "round", "meanfield_text", "counts"]).to_pylist()
              for r in runs]
    assert rounds[0] == rounds[1]


def test_several_inference_actors_give_the_same_run(small_world_dir: Path,
                                                    tmp_path: Path) -> None:
    """Simulations are split over 2 model actors (sim_id mod 2); tables and the text mean
    field equal a one-actor run, and every prompt was asked of exactly one actor."""
    kw = {"variants": ("mf", "mf-text", "mf-cal", "persistence"), "seeds": (0,)}
    runs = []
    for shards, actors in ((1, 1), (2, 2)):
        cfg = _cfg(small_world_dir, shards=shards, **kw)
        cfg = replace(cfg, policy=replace(cfg.policy, log_prompts=True),
                      resources=replace(cfg.resources, inference_actors=actors))
        runs.append(_run(cfg, tmp_path / f"a{actors}"))
    one, two = (_stable(r.read_decisions()) for r in runs)
    assert len(one) > 0 and one == two
    cols = ["sim_id", "round", "meanfield_text", "counts"]
    assert runs[0].read_rounds(columns=cols).to_pylist() == \
        runs[1].read_rounds(columns=cols).to_pylist()
    logged = [Path(runs[0].run_dir / "prompts.jsonl").read_text().splitlines(),
              [line for a in range(2)
               for line in (runs[1].run_dir / f"prompts-{a}.jsonl").read_text().splitlines()]]
    assert sorted(logged[0]) == sorted(logged[1])
    for a in range(2):  # affinity: an actor only ever saw its own simulations
        keys = [json.loads(line)["key"] for line in
                (runs[1].run_dir / f"prompts-{a}.jsonl").read_text().splitlines()]
        assert keys and all(k[0] % 2 == a for k in keys)


def test_injected_stop_then_resume_equals_uninterrupted(small_world_dir: Path,
                                                        tmp_path: Path) -> None:
    cfg = _cfg(small_world_dir, variants=("mf", "recent", "surrogate-mf"), seeds=(0,))
    full = _run(cfg, tmp_path / "full")
    part = _run(cfg, tmp_path / "part", max_rounds=4)  # rounds 0..3, then stop
    assert part.completed_rounds() == [0, 1, 2, 3]
    assert part.run_info()["status"] == "running"
    resumed = _run(cfg, tmp_path / "part", resume=True)
    assert resumed.completed_rounds() == full.completed_rounds()
    assert resumed.run_info()["status"] == "complete"
    assert _stable(resumed.read_decisions()) == _stable(full.read_decisions())
    cols = ["sim_id", "round", "meanfield_text", "meanfield_shares", "counts"]
    assert resumed.read_rounds(columns=cols).to_pylist() == full.read_rounds(
        columns=cols).to_pylist()


def test_resume_refuses_a_different_config(small_world_dir: Path, tmp_path: Path) -> None:
    _run(_cfg(small_world_dir), tmp_path / "run", max_rounds=1)
    with pytest.raises(StoreError, match="config differs"):
        _run(_cfg(small_world_dir, warmup=30), tmp_path / "run", resume=True)


def test_failed_model_calls_are_failed_decisions(small_world_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(small_world_dir, variants=("mf",), seeds=(0,), max_failure_rate=1.0)
    flaky = ScriptedModel(fail_every=5, model_id="flaky")
    store = _run(cfg, tmp_path / "r", model=flaky)
    d = store.read_decisions().to_pylist()
    failed = [r for r in d if not r["ok"]]
    assert failed and all(r["action"] is None and r["probs"] is None for r in failed)
    assert all("scripted failure" in r["error"] for r in failed)
    assert any(r["ok"] and not r["is_warmup"] for r in d)  # the others were retried and scored
    n_failed = sum(r["n_failed"] for r in store.read_rounds().to_pylist())
    assert n_failed == len(failed)


def test_failure_threshold_stops_the_run(small_world_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(small_world_dir, variants=("mf",), seeds=(0,), max_failure_rate=0.05)
    broken = ScriptedModel(fail_when=lambda p: True, model_id="broken")
    with pytest.raises(MfrayError, match="model decisions failed"):
        _run(cfg, tmp_path / "r", model=broken)
    info = RunStore.open(tmp_path / "r").run_info()
    assert info["status"] == "failed" and "sim.max_failure_rate" in info["message"]


def test_mf_beats_state_on_the_synthetic_world(tmp_path: Path) -> None:
    """A scripted policy following the world's own rule: reading the mean field must help."""
    _, ds = generate(WorldParams(n_events=6, min_agents=100, max_agents=140, seed=11))
    data = write_dataset(ds, tmp_path / "data")
    cfg = _cfg(data, model="scripted-world", variants=("state", "mf"), seeds=(0, 1),
               warmup=50)
    store = _run(cfg, tmp_path / "run")
    kl = {e["variant"]: e["kl"] for e in evaluate(store.run_dir).summary}
    assert kl["mf"] < kl["state"], kl


def test_plan_and_errors(small_world_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(small_world_dir)
    specs = plan(cfg, read_dataset(small_world_dir))
    assert len(specs) == 4 * 2 * len(FREE)
    assert [s.sim_id for s in specs] == list(range(len(specs)))
    with pytest.raises(StoreError, match="resume"):
        _run(cfg, tmp_path / "run", max_rounds=1)
        _run(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="synthetic-world"):
        from mfray.baselines import load_world
        from mfray.data.build import build_dataset

        load_world("oracle", build_dataset("x", {"s": ("a",)}, [], []))


def test_text_meanfield_summaries_reach_the_prompts(small_world_dir: Path,
                                                    tmp_path: Path) -> None:
    """mf-text: the model rewrites each simulation's summary once per round; later prompts
    show it; 1 shard == 4 shards; resume restores the summaries."""
    summarizer = ScriptedModel(text_fn=lambda prompt, seed: f"summary of {len(prompt)} chars")
    kw = {"variants": ("mf-text", "mf-hybrid"), "seeds": (0,), "events": ("synth-00",)}
    cfg = replace_policy(_cfg(small_world_dir, **kw), log_prompts=True)
    one = _run(cfg, tmp_path / "one", model=summarizer)
    rounds = one.read_rounds().to_pylist()
    assert all(r["meanfield_text"].startswith("summary of ") for r in rounds)
    prompts = (one.run_dir / "prompts.jsonl").read_text()
    assert "Summary of the other users' reactions so far:\\nsummary of" in prompts
    assert "How the other users have reacted so far" in prompts  # mf-hybrid shows both
    four = _run(replace_policy(_cfg(small_world_dir, shards=4, **kw), log_prompts=True),
                tmp_path / "four", model=summarizer)
    assert _stable(one.read_decisions()) == _stable(four.read_decisions())
    assert _run(cfg, tmp_path / "part", model=summarizer,
                max_rounds=3).completed_rounds() == [0, 1, 2]
    resumed = _run(cfg, tmp_path / "part", model=summarizer, resume=True)
    assert _stable(resumed.read_decisions()) == _stable(one.read_decisions())
    cols = ["sim_id", "round", "meanfield_text"]
    assert resumed.read_rounds(columns=cols).to_pylist() == one.read_rounds(
        columns=cols).to_pylist()


def replace_policy(cfg: RunConfig, **kw) -> RunConfig:
    from dataclasses import replace

    return replace(cfg, policy=replace(cfg.policy, **kw))


def test_text_mode_generates_posts_and_labels_them(small_world_dir: Path,
                                                   tmp_path: Path) -> None:
    """Text mode: each rollout agent's post is generated from its own seed, its first line
    kept, labelled by the same model; empty output is a failed decision."""
    def write(prompt: str, seed: int) -> str:
        if seed % 7 == 0:
            return "   "  # nothing usable: the decision must fail, not get a placeholder
        return ("This is fake news" if seed % 2 else "Is this confirmed?") + "\nsecond line"

    def label(prompt: str, options) -> list[float]:
        reply = prompt.rsplit("fake news", 1)
        return [0.1, 0.8, 0.05, 0.05] if len(reply) == 2 else [0.05, 0.05, 0.8, 0.1]

    model = ScriptedModel(fn=label, text_fn=write)
    kw = {"variants": ("state", "mf"), "seeds": (0,), "events": ("synth-00", "synth-01")}
    cfg = replace_policy(_cfg(small_world_dir, **kw), mode="text")
    one = _run(cfg, tmp_path / "one", model=model)
    roll = [r for r in one.read_decisions().to_pylist() if not r["is_warmup"]]
    ok = [r for r in roll if r["ok"]]
    failed = [r for r in roll if not r["ok"]]
    assert ok and failed and all(r["error"] == "empty output" for r in failed)
    assert all(r["action"] is None and r["probs"] is None for r in failed)
    for r in ok:
        assert r["action_text"] in ("This is fake news", "Is this confirmed?")
        expected = "deny" if r["action_text"] == "This is fake news" else "query"
        assert r["action"] == {"stance": expected} and r["probs"] is None
    four = _run(replace_policy(_cfg(small_world_dir, shards=4, **kw), mode="text"),
                tmp_path / "four", model=model)
    assert _stable(one.read_decisions()) == _stable(four.read_decisions())


def test_the_driver_says_what_it_does_before_the_first_round(
        small_world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Ray's start and the references' fits take seconds to a minute: the driver's console
    hears of each step before the first round, in order."""
    cfg = _cfg(small_world_dir, variants=("base-rate", "mf"), seeds=(0,))
    simulate(cfg, read_dataset(small_world_dir), tmp_path / "r", progress=True)
    err = capsys.readouterr().err
    steps = ["mfray: 8 simulations", "fitting the references", "mfray: starting Ray",
             "mfray: loading the model (scripted)", "rounds:"]
    at = [err.find(s) for s in steps]
    assert all(i >= 0 for i in at) and at == sorted(at), err[:500]


def test_a_prompt_asked_by_several_simulations_is_scored_once(small_world_dir: Path,
                                                              tmp_path: Path) -> None:
    """mf-cal's mean field does not depend on the draws, so its two seeds ask the same prompts
    every round: the model scores each once, and both seeds get its answer."""
    log = tmp_path / "asked.jsonl"  # the model runs in the inference actor's process

    def fn(prompt: str, options) -> np.ndarray:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(prompt) + "\n")
        return np.arange(1, len(options) + 1, dtype=float)

    cfg = _cfg(small_world_dir, variants=("mf-cal",), seeds=(0, 1), events=("synth-00",))
    rows = [r for r in _run(cfg, tmp_path / "r", model=ScriptedModel(fn=fn)).read_decisions()
            .to_pylist() if not r["is_warmup"]]
    asked = log.read_text().splitlines()
    # each distinct prompt once: at most one per agent of one seed (two agents of a round
    # with the same persona and post ask the same too)
    assert rows and len(asked) == len(set(asked)) and len(rows) // 2 - 5 <= len(asked) \
        <= len(rows) // 2
    by_seed = {(r["seed"], r["agent_index"]): r["probs"] for r in rows}
    assert all(by_seed[0, i] == by_seed[1, i] for s, i in by_seed if s == 0)
    assert all(r["latency_s"] is not None for r in rows)
