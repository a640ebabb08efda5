"""Tests of the numeric mean field: counts, shares, the prompt rendering, immutability."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mfray.meanfield import NO_REACTIONS, TALLY_SIZE, NumericMeanField, tally

SPACE = {"stance": ("support", "deny", "query", "comment"), "emotion": ("pos", "neg")}


def test_empty() -> None:
    mf = NumericMeanField.empty(SPACE)
    assert mf.counts == {"stance": (0, 0, 0, 0), "emotion": (0, 0)}
    assert mf.n("stance") == 0 and mf.n("emotion") == 0


def test_uniform_shares_when_empty() -> None:
    mf = NumericMeanField.empty(SPACE)
    np.testing.assert_array_equal(mf.shares("stance"), [0.25] * 4)
    np.testing.assert_array_equal(mf.shares("emotion"), [0.5, 0.5])


def test_update_counts_and_accumulates() -> None:
    mf = NumericMeanField.empty(SPACE)
    mf = mf.update(SPACE, {"stance": ["comment", "deny", "comment"], "emotion": ["neg"]})
    assert mf.counts == {"stance": (0, 1, 0, 2), "emotion": (0, 1)}
    mf = mf.update(SPACE, {"stance": ["support"]})  # a dimension absent from a round: unchanged
    assert mf.counts == {"stance": (1, 1, 0, 2), "emotion": (0, 1)}
    assert mf.n("stance") == 4
    np.testing.assert_allclose(mf.shares("stance"), [0.25, 0.25, 0.0, 0.5])
    assert all(isinstance(c, int) for c in mf.counts["stance"])


def test_none_labels_are_not_counted() -> None:
    mf = NumericMeanField.empty(SPACE).update(
        SPACE, {"stance": [None, "query", None], "emotion": [None, None]})
    assert mf.counts == {"stance": (0, 0, 1, 0), "emotion": (0, 0)}
    assert mf.n("emotion") == 0
    np.testing.assert_array_equal(mf.shares("emotion"), [0.5, 0.5])  # still uniform


def test_decisions_with_a_distribution_add_their_expected_counts() -> None:
    """``sim.meanfield_update = "expected"``: a model decision adds its action distribution,
    a real or injected one (no distribution) its label; n still counts whole decisions."""
    mf = NumericMeanField.empty(SPACE).update(SPACE, {"stance": ["comment", "deny"]})
    mf = mf.update(SPACE, {"stance": ["deny", "query", "support"]},
                   {"stance": [[0.1, 0.2, 0.3, 0.4], None, [0.5, 0.0, 0.25, 0.25]]})
    np.testing.assert_allclose(mf.counts["stance"], [0.6, 1.2, 1.55, 1.65])
    assert mf.n("stance") == 5
    np.testing.assert_allclose(mf.shares("stance"), np.array([0.6, 1.2, 1.55, 1.65]) / 5)
    assert mf.render(SPACE).splitlines()[0] == "stance: comment 33%, query 31%, deny 24%, support 12% (n=5)"
    # a sum that lands on whole counts is stored as ints, the same as labels give
    whole = NumericMeanField.empty(SPACE).update(SPACE, {"stance": ["deny", "deny"]},
                                                 {"stance": [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]]})
    assert whole.counts["stance"] == (1, 1, 0, 0) == whole.update(SPACE, {}).counts["stance"]
    assert all(isinstance(c, int) for c in whole.counts["stance"])
    # the tally line depends on the counts only, not on float noise in the order of the sum
    a = NumericMeanField({"stance": (0.1 + 0.2, 0.7, 1.0, 2.0), "emotion": (0, 0)})
    b = NumericMeanField({"stance": (0.3, 0.7, 1.0, 2.0), "emotion": (0, 0)})
    assert a.render(SPACE, "tally") == b.render(SPACE, "tally")


def test_render_exact() -> None:
    mf = NumericMeanField.empty(SPACE).update(
        SPACE, {"stance": ["support", "support", "comment", None], "emotion": ["pos"]})
    assert mf.render(SPACE) == ("stance: support 67%, comment 33%, deny 0%, query 0% (n=3)\n"
                                "emotion: pos 100%, neg 0% (n=1)")  # most common first


def test_render_empty_and_partly_empty() -> None:
    mf = NumericMeanField.empty(SPACE)
    assert mf.render(SPACE) == f"stance: {NO_REACTIONS}\nemotion: {NO_REACTIONS}"
    mf = mf.update(SPACE, {"emotion": ["neg", "neg", "pos", "neg"]})
    assert mf.render(SPACE) == f"stance: {NO_REACTIONS}\nemotion: neg 75%, pos 25% (n=4)"


@pytest.mark.parametrize(("shares", "expected"), [
    ([0.25, 0.25, 0.25, 0.25], [5, 5, 5, 5]),
    ([1 / 3, 1 / 3, 1 / 3, 0.0], [7, 7, 6, 0]),   # the remainder to the earliest of a tie
    ([0.08, 0.33, 0.19, 0.40], [2, 6, 4, 8]),     # 1.6, 6.6, 3.8, 8: remainders .8, then .6 (tie)
    ([0.0, 0.0, 0.0, 1.0], [0, 0, 0, 20]),
])
def test_tally_counts(shares: list[float], expected: list[int]) -> None:
    assert tally(np.array(shares)).tolist() == expected


def test_tally_sums_to_its_size_for_any_counts() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.multinomial(int(rng.integers(1, 300)), rng.dirichlet(np.ones(4)))
        t = tally(counts / counts.sum())
        assert t.sum() == TALLY_SIZE and (t >= 0).all()
        assert np.abs(t / TALLY_SIZE - counts / counts.sum()).max() <= 1 / TALLY_SIZE + 1e-12


def test_render_tally() -> None:
    mf = NumericMeanField({"stance": (3, 5, 1, 10), "emotion": (0, 0)})
    line = mf.render(SPACE, "tally")
    assert line == ("stance: 20 typical reactions: comment deny deny comment comment deny deny "
                    "comment deny comment comment comment comment query support comment comment "
                    f"support support comment (n=19)\nemotion: {NO_REACTIONS}")
    words = line.split("\n")[0].split(": ")[2].removesuffix(" (n=19)").split()
    assert [words.count(o) for o in SPACE["stance"]] == tally(mf.shares("stance")).tolist()
    assert mf.render(SPACE, "tally") == line  # a function of the counts: the same on any shard
    # the order is shuffled, not sorted: another count with the same tally words differs
    other = NumericMeanField({"stance": (6, 10, 2, 20), "emotion": (0, 0)}).render(SPACE, "tally")
    assert sorted(other.split("\n")[0].split()[4:24]) == sorted(words) and other != line
    # 19 reactions written out as 19 words: the counts themselves
    exact = mf.render(SPACE, "tally", tally_size=19).split("\n")[0]
    assert exact.startswith("stance: 19 typical reactions: ")
    assert [exact.split()[4:-1].count(o) for o in SPACE["stance"]] == [3, 5, 1, 10]
    with pytest.raises(ValueError, match="unknown mean-field form 'bars'"):
        mf.render(SPACE, "bars")  # type: ignore[arg-type]


def test_immutability() -> None:
    empty = NumericMeanField.empty(SPACE)
    after = empty.update(SPACE, {"stance": ["deny"]})
    assert after is not empty
    assert empty.counts["stance"] == (0, 0, 0, 0)  # the previous state is untouched
    assert after.counts["stance"] == (0, 1, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.counts = {}  # type: ignore[misc]
    assert isinstance(after.counts["stance"], tuple)


def test_equal_states_compare_equal() -> None:
    a = NumericMeanField.empty(SPACE).update(SPACE, {"stance": ["deny", "query"]})
    b = NumericMeanField.empty(SPACE).update(SPACE, {"stance": ["query"]}).update(
        SPACE, {"stance": ["deny"]})
    assert a == b  # order of decisions does not matter to the numeric mean field


def test_tally_line_is_the_rendered_line_and_another_seed_only_reorders_it() -> None:
    mf = NumericMeanField({"stance": (3, 5, 1, 10), "emotion": (0, 0)})
    line = mf.tally_line("stance", SPACE["stance"], 48)
    assert mf.render(SPACE, "tally", tally_size=48).split("\n")[0] == line
    words = line.split()[4:-1]
    assert len(words) == 48
    others = [mf.tally_line("stance", SPACE["stance"], 48, order_seed=s).split()[4:-1]
              for s in range(3)]
    for w in others:
        assert sorted(w) == sorted(words)  # the same reactions ...
    assert len({tuple(w) for w in [words, *others]}) == 4  # ... each seed in its own order
    # the seed is the whole randomness: the same seed, the same line
    assert (mf.tally_line("stance", SPACE["stance"], 48, order_seed=1)
            == mf.tally_line("stance", SPACE["stance"], 48, order_seed=1))
