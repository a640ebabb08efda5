from __future__ import annotations

import numpy as np
import pytest

from mfray.errors import ConfigError
from mfray.meanfield import NumericMeanField
from mfray.policy import PastAction, choice_distribution, population_text, prompt_parts

SPACE = {"stance": ("support", "deny", "query", "comment")}


def _history(n: int, followers=None) -> list[PastAction]:
    followers = followers or list(range(n))
    return [PastAction({"stance": SPACE["stance"][i % 4]}, f"text {i}", followers[i])
            for i in range(n)]


def test_state_shows_nothing_and_mf_shows_shares() -> None:
    mf = NumericMeanField.empty(SPACE).update(SPACE, {"stance": ["deny", "deny", "comment"]})
    assert population_text("state", meanfield=mf, history=[], label_space=SPACE) == ""
    text = population_text("mf", meanfield=mf, history=[], label_space=SPACE)
    assert "deny 67%" in text and "comment 33%" in text and "(n=3)" in text
    empty = population_text("mf", meanfield=NumericMeanField.empty(SPACE), history=[],
                            label_space=SPACE)
    assert "no reactions yet" in empty


def test_recent_shows_the_last_k_in_order() -> None:
    text = population_text("recent", meanfield=NumericMeanField.empty(SPACE),
                           history=_history(8), label_space=SPACE, recent_k=5)
    lines = text.strip().splitlines()
    assert lines[0] == "The 5 latest replies by other users:"
    assert [line.split('"')[1] for line in lines[1:]] == [f"text {i}" for i in range(3, 8)]


def test_popular_ranks_by_followers_and_missing_last() -> None:
    followers = [10, None, 500, 3, 500, None, 7, 1]
    text = population_text("popular", meanfield=NumericMeanField.empty(SPACE),
                           history=_history(8, followers), label_space=SPACE, popular_k=3)
    shown = [line.split('"')[1] for line in text.strip().splitlines()[1:]]
    # 500 twice (the more recent first), then 10; missing counts never outrank real ones
    assert shown == ["text 4", "text 2", "text 0"]
    only_missing = population_text("popular", meanfield=NumericMeanField.empty(SPACE),
                                   history=_history(2, [None, None]), label_space=SPACE)
    assert "text 1" in only_missing.splitlines()[1]


def test_popular_window_excludes_old_actions() -> None:
    followers = [10_000] + [1] * 30  # the famous account is 31 actions ago
    text = population_text("popular", meanfield=NumericMeanField.empty(SPACE),
                           history=_history(31, followers), label_space=SPACE,
                           popular_window=30)
    assert '"text 0"' not in text


def test_text_meanfield_blocks() -> None:
    mf = NumericMeanField.empty(SPACE).update(SPACE, {"stance": ["deny"]})
    text = population_text("mf-text", meanfield=mf, history=[], label_space=SPACE,
                           summary="Most users doubt it.")
    assert "Most users doubt it." in text and "deny 100%" not in text
    hybrid = population_text("mf-hybrid", meanfield=mf, history=[], label_space=SPACE,
                             summary="Most users doubt it.")
    assert "Most users doubt it." in hybrid and "deny 100%" in hybrid
    empty = population_text("mf-text", meanfield=mf, history=[], label_space=SPACE)
    assert "no reactions yet" in empty
    with pytest.raises(ConfigError, match="no population block"):
        population_text("sft", meanfield=mf, history=[], label_space=SPACE)


def test_meanfield_prompt_and_summary_cleaning() -> None:
    from mfray.policy import clean_summary, meanfield_prompt

    p = meanfield_prompt(topic="T", previous=None, label_space=SPACE,
                         actions=[PastAction({"stance": "deny"}, "fake", 1),
                                  PastAction({"stance": "query"}, None, None)])
    assert "Previous summary: no reactions yet" in p and '- deny: "fake"' in p
    assert p.index("deny") < p.index("query") and p.endswith("New summary:\n")
    assert clean_summary("  Doubt grows.\n\nExtra") == "Doubt grows."
    assert clean_summary("   ") is None and len(clean_summary("x" * 1000)) == 400


def test_prompt_parts_and_choice_distribution() -> None:
    shared, agent = prompt_parts(topic="t", population="", context="c", persona="p",
                                 dimension="stance", options=SPACE["stance"])
    assert "Options: support, deny, query, comment." in agent and "Topic: t" in shared
    p = choice_distribution(np.log(np.array([[0.2, 0.3, 0.1, 0.4], [1e-9, 1, 1, 1]])) + 5)
    np.testing.assert_allclose(p[0], [0.2, 0.3, 0.1, 0.4])
    assert np.allclose(p.sum(axis=1), 1)


def test_calibrate_meets_the_target_and_keeps_each_agents_odds() -> None:
    from mfray.policy import calibrate

    rng = np.random.default_rng(0)
    logs = np.log(rng.dirichlet(np.ones(4), size=12))
    target = np.array([0.1, 0.2, 0.3, 0.4])
    q = choice_distribution(calibrate(logs, target))
    np.testing.assert_allclose(q.mean(axis=0), target, atol=1e-9)
    p = choice_distribution(logs)
    # one offset per option: every pair of agents keeps its odds ratio for every option pair
    ratio = np.log(q[:, 0] / q[:, 1]) - np.log(p[:, 0] / p[:, 1])
    assert np.ptp(ratio) < 1e-9 and abs(ratio[0]) > 1e-3
    # a row order does not change a row's result; an option a model rules out is reachable
    np.testing.assert_allclose(choice_distribution(calibrate(logs[::-1], target))[::-1], q,
                               atol=1e-12)
    ruled_out = np.array([[0.0, 0.0, -np.inf, -np.inf], [0.0, -0.8, -np.inf, -np.inf]])
    np.testing.assert_allclose(choice_distribution(calibrate(ruled_out, target)).mean(0),
                               target, atol=1e-6)
