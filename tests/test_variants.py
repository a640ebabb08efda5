"""The table of variants: its traits are what the engine, the prompts, the configs and
training do with each variant, and a lookup of an unknown name names the choices."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mfray.baselines import surrogate_probs
from mfray.config import PolicyConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine.layout import plan, shard_sims
from mfray.engine.population import Population
from mfray.engine.shard import AgentShard
from mfray.errors import ConfigError
from mfray.meanfield import NumericMeanField
from mfray.policy import PastAction, population_text
from mfray.train.config import TrainParams
from mfray.variants import TABLE, TRAIN_VARIANTS, VARIANTS, known, variant

SPACE = {"stance": ("support", "deny", "query", "comment")}


def test_lookup_and_unknown_names() -> None:
    assert [variant(v.name) for v in TABLE] == list(TABLE)
    assert len({v.name for v in TABLE}) == len(TABLE)
    with pytest.raises(ConfigError, match="unknown variant 'gpt'; choose from state, recent"):
        variant("gpt")
    with pytest.raises(ConfigError, match="unknown variant"):
        variant(["mf"])  # type: ignore[arg-type]
    assert known("mf") and not known("mf+boost") and not known(None)
    assert "sft" not in VARIANTS and "sft" in TRAIN_VARIANTS
    assert set(TRAIN_VARIANTS) == {v.name for v in TABLE if v.needs_model}


def test_traits_are_consistent() -> None:
    for v in TABLE:
        if v.kind in ("llm", "distilled"):  # the prompt shows the mean field the variant reads
            assert ("numeric" in v.shows, "text" in v.shows) == (
                v.meanfield in ("numeric", "both"), v.meanfield in ("text", "both")), v.name
        else:
            assert v.shows == (), v.name
        assert (v.rule is None) == v.reads_prompt, v.name
        assert v.reads_prompt or not v.needs_model, v.name
        assert v.prompt_variant == (v.trains_as or v.name)
        assert variant(v.prompt_variant).kind == "llm" or not v.needs_model


@pytest.mark.parametrize("name", [v.name for v in TABLE])
def test_the_prompt_shows_what_the_table_says(name: str) -> None:
    v = variant(name)
    history = [PastAction({"stance": "deny"}, f"post {k}", k) for k in range(3)]

    def render() -> str:
        return population_text(name, meanfield=NumericMeanField({"stance": [1, 2, 0, 0]}),
                               history=history, label_space=SPACE, summary="a summary")

    if v.kind not in ("llm", "distilled"):
        with pytest.raises(ConfigError, match="no population block"):
            render()
        return
    text = render()
    assert ("How the other users have reacted" in text) == v.shows_numeric
    assert ("a summary" in text) == ("text" in v.shows)
    assert ("latest replies" in text) == ("recent" in v.shows)
    assert ("most-followed" in text) == ("popular" in v.shows)
    assert (text == "") == (v.shows == ())
    if v.shows == ("text", "numeric"):
        assert text.index("a summary") < text.index("How the other users")


def test_only_surrogates_follow_the_world() -> None:
    for v in TABLE:
        if not v.needs_world:
            with pytest.raises(ConfigError, match="not a surrogate"):
                surrogate_probs(v.name, None, "e", np.zeros((1, 3)),  # type: ignore[arg-type]
                                np.ones(4) / 4, 0)


def test_configs_ask_the_table() -> None:
    assert SimConfig(variants=VARIANTS).variants == VARIANTS
    for v in TABLE:
        if v.needs_event_units:
            with pytest.raises(ConfigError, match=f"variant '{v.name}' needs sim.unit = event"):
                SimConfig(variants=(v.name,), unit="thread")
        elif v.simulated:
            SimConfig(variants=(v.name,), unit="thread")
        else:
            with pytest.raises(ConfigError, match="unknown variant"):
                SimConfig(variants=(v.name,))
    for name in TRAIN_VARIANTS:
        assert TrainParams(variant=name).prompt_variant == variant(name).prompt_variant
    assert TrainParams(variant="sft").prompt_variant == "state"
    with pytest.raises(ConfigError, match="train.variant 'base-rate'"):
        TrainParams(variant="base-rate")


def test_the_engine_does_what_the_table_says(small_world_dir: Path, tmp_path: Path) -> None:
    """In process: which simulations get model requests, a population block, a text mean
    field, the synthetic world, fitted references, a prior weight and the event latent."""
    from scipy.special import softmax

    from mfray.llm.distill import DistilledModel, fit_distilled

    prompts = [f"a {w} says comment {p}%" for w in ("x", "y") for p in range(0, 90, 10)]
    fit = fit_distilled(prompts, softmax(np.arange(4.0) + np.zeros((18, 1)), axis=1),
                        ("support", "deny", "query", "comment"))[0]
    DistilledModel([fit]).save(tmp_path / "distilled.json")
    ds = read_dataset(small_world_dir)
    cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=VARIANTS, seeds=(0,),
                                  warmup=0, round_size=16),
                    policy=PolicyConfig(model="scripted", distilled=str(tmp_path)))
    cfg = replace(cfg, sim=replace(cfg.sim, events=(plan(cfg, ds)[0].unit.event_id,)))
    specs = plan(cfg, ds)
    per_shard, metas, world, references = shard_sims(specs, ds, cfg, 1)
    by_sim = {s.sim_id: variant(s.variant) for s in specs}
    assert world is not None
    assert {r["variant"] for r in references} == {v.name for v in TABLE if v.needs_fit}
    assert {v.name for v in TABLE if v.needs_fit and v.kind != "reference"} == {"mf-cal"}
    for sim in per_shard[0]:
        v = by_sim[sim.sim_id]
        assert (sim.fixed is not None) == v.needs_fit, v.name
        assert (sim.crowd_prior is not None) == (v.needs_fit and v.meanfield != "none"), v.name
        # shift-robust: every fit but the base rate's and the warm-up's own mix
        assert (sim.like_training is not None) == (v.needs_fit and (
            v.rule == "persistence" or v.meanfield != "none")), v.name
        assert (sim.features is not None) == v.needs_world, v.name
        assert (sim.latent is not None) == v.needs_event_units, v.name
    shard = AgentShard(per_shard[0], ds.label_space, cfg.sim, "test", world,
                       distilled=str(tmp_path))
    population = Population(metas, ds.label_space, cfg.sim)
    views = population.publish()
    assert {k for k, view in views.items() if view.population is not None} == \
        {k for k, v in by_sim.items() if v.reads_prompt}
    requests = shard.requests(0, views)
    assert {k for k, _, _ in requests.keys} == {k for k, v in by_sim.items() if v.needs_model}
    # the model-free variants decide in the shard, the distilled one from its prompts
    for sim in (s for s in per_shard[0] if not by_sim[s.sim_id].needs_model):
        probs = shard._model_free(sim, shard.round_agents(sim, 0), views[sim.sim_id])
        assert np.allclose(probs["stance"].sum(axis=1), 1), sim.variant
    real = list(per_shard[0])
    population.update(0, pa.table({
        "sim_id": [s.sim_id for s in real for _ in range(2)],
        "agent_index": [i for _ in real for i in range(2)],
        "action": [dict(s.real[i]) for s in real for i in range(2)],
        "action_text": [s.real_text[i] for s in real for i in range(2)],
        "ok": [True] * 2 * len(real), "is_warmup": [True] * 2 * len(real)}))
    assert {k for k, _ in population.meanfield_requests()} == \
        {k for k, v in by_sim.items() if v.keeps_text}
    # resume: only the simulations that keep a text mean field take the stored text back
    population.replay([], {k: f"stored {k}" for k in by_sim})
    assert {k for k, text in population.summary.items() if text} == \
        {k for k, v in by_sim.items() if v.keeps_text}
