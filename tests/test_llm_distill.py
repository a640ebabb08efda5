"""llm/distill.py: the distilled policy's features, its fit to a teacher's distributions, and
its JSON file (in process; the runs: tests/test_distill.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from mfray.config import PolicyConfig
from mfray.llm.base import ModelError
from mfray.llm.build import build_model, check_model
from mfray.llm.distill import DistilledModel, fit_distilled, kl_rows, load_distilled, shares

OPTIONS = ("support", "deny", "query", "comment")
WORDS = ("journalist", "student", "nurse", "farmer", "teacher")


def _prompts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Prompts with a persona word and a shares line, and a teacher that reads both: it follows
    the crowd (4 × each share) and a journalist leans to deny."""
    rng = np.random.default_rng(seed)
    prompts, logits = [], []
    for _ in range(n):
        s = rng.dirichlet(np.ones(4))
        pct = np.round(s * 100).astype(int)
        order = np.argsort(-pct, kind="stable")
        line = ", ".join(f"{OPTIONS[k]} {pct[k]}%" for k in order)
        who = WORDS[rng.integers(len(WORDS))]
        prompts.append(f"You are a {who}.\nHow the other users have reacted so far:\n"
                       f"stance: {line} (n=40)\nYour reply:")
        logits.append(4 * pct / 100 + np.array([0, 1.5 * (who == "journalist"), 0, 0]))
    return prompts, softmax(np.array(logits), axis=1)


def test_shares_are_read_by_value_in_the_options_order() -> None:
    text = "stance: comment 65%, support 19%, query 8%, deny 7% (n=120)"
    assert shares(text, OPTIONS).tolist() == [0.19, 0.07, 0.08, 0.65]
    assert shares("stance: no reactions yet", OPTIONS).tolist() == [0, 0, 0, 0]


def test_a_teacher_reading_the_shares_and_the_persona_is_reproduced(tmp_path: Path) -> None:
    prompts, probs = _prompts(600, seed=0)
    model, report = fit_distilled(prompts, probs, OPTIONS)
    assert report["heldout_prompts"] == 120 and report["prompts"] == 600
    assert report["heldout_kl"] < 0.01 < report["heldout_kl_of_the_mean"]
    fresh, target = _prompts(200, seed=1)  # prompts it never saw
    assert kl_rows(target, model.log_probs(fresh)).mean() < 0.01
    # saved as JSON, read back by policy.model=DIR, scoring the same
    policy = DistilledModel([model], teacher="tiny")
    policy.save(tmp_path / "distilled.json", report)
    assert (tmp_path / "distilled.json").read_text().startswith('{"kind": "mfray-distilled')
    check_model(PolicyConfig(model=str(tmp_path)))
    loaded = build_model(PolicyConfig(model=str(tmp_path)))
    assert isinstance(loaded, DistilledModel) and loaded.teacher == "tiny"
    np.testing.assert_allclose(loaded.score(fresh, OPTIONS), model.log_probs(fresh))
    assert np.allclose(np.exp(log_softmax(loaded.score(fresh, OPTIONS), axis=1)).sum(axis=1), 1)
    with pytest.raises(ModelError, match="fitted on the options"):
        loaded.score(fresh, ("true", "false"))
    with pytest.raises(ModelError, match="writes no text"):
        loaded.generate(fresh)
    with pytest.raises(ModelError, match="policy.mode=choice"):
        check_model(PolicyConfig(model=str(tmp_path), mode="text"))


def test_a_broken_file_and_bad_targets_are_refused(tmp_path: Path) -> None:
    (tmp_path / "distilled.json").write_text('{"kind": "something else"}')
    with pytest.raises(ModelError, match="cannot read the distilled policy"):
        load_distilled(tmp_path / "distilled.json")
    with pytest.raises(ValueError, match="one probability per option"):
        fit_distilled(["a", "b"], np.ones((2, 3)) / 3, OPTIONS)


def test_the_teachers_chat_template_is_not_learnt(tmp_path: Path) -> None:
    """The teacher's log holds its prompts inside its chat template; the distilled policy reads
    them bare. Terms found in every prompt are left out, so the template moves nothing (with
    them, the intercept shifted and a simulation drifted towards uniform: results/distill.md)."""
    prompts, probs = _prompts(600, seed=0)
    wrapped = [f"<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n"
               f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" for p in prompts]
    model, _ = fit_distilled(wrapped, probs, OPTIONS)
    assert not any("im_start" in term for term in model.vocabulary)
    fresh, target = _prompts(200, seed=1)
    assert kl_rows(target, model.log_probs(fresh)).mean() < 0.01


def test_scoring_by_parts_equals_scoring_whole_prompts() -> None:
    """The fast path (each distinct part scored once, issue 42's 10^7 agents) gives the model's
    own answer on the whole prompt: real policy prompts, a word pair across the split, shares
    in the agent part (the later part's win) and a prompt with no agent part."""
    from mfray.llm.distill import _log_probs
    from mfray.policy import prompt_parts

    rng = np.random.default_rng(0)
    prompts, probs = [], []
    for n in range(400):
        pct = np.round(rng.dirichlet(np.ones(4)) * 100).astype(int)
        population = ("How the other users have reacted so far:\nstance: " + ", ".join(
            f"{o} {p}%" for o, p in zip(OPTIONS, pct, strict=True)) + "\n\n") if n % 3 else ""
        context = WORDS[n % 5] + (f" deny {n % 90}%" if n % 7 == 0 else "")
        shared, agent = prompt_parts(topic="a bridge fell", population=population,
                                     context=context, persona=WORDS[(n * 3) % 5],
                                     dimension="stance", options=OPTIONS)
        prompts.append(shared + agent)
        probs.append(softmax(4 * pct / 100 + rng.normal(size=4)))
    model, _ = fit_distilled(prompts, np.array(probs), OPTIONS)
    odd = ["no agent part at all: support 50%", prompts[1].replace("\nThe user", " The user")]
    for batch in (prompts, odd, prompts):  # the third from the cache
        whole = _log_probs(model.features(batch), model.coef, model.intercept)
        np.testing.assert_allclose(model.log_probs(batch), whole, rtol=0, atol=1e-12)
    assert len(model._parts.cache) < len(prompts)  # the shared parts were read once each
