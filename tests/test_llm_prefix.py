"""Padded batches and shared-prefix reuse (mfray/llm/prefix.py): groups found on token ids, and
scores equal to the plain computation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfray.llm import prefix
from mfray.llm.prefix import MAX_PADDING, common_prefix, pack, prefix_groups
from mfray.policy import prompt_parts

OPTS = ("support", "deny", "query", "comment")


def test_prefix_groups_by_hand() -> None:
    a = list(range(40))
    rows = [a + [90], a + [91, 92], a[:35] + [93, 94], [7] * 50, [7] * 50 + [1], [3]]
    assert common_prefix(rows[0], rows[1]) == 40
    groups = prefix_groups(rows, min_shared=32)
    assert groups == [(35, [0, 1, 2]), (49, [3, 4]), (0, [5])]  # 50-token row keeps 1
    # every row keeps one token of its own; one row alone is scored the plain way
    assert prefix_groups([a, a], min_shared=32) == [(39, [0, 1])]
    assert prefix_groups([a], min_shared=32) == [(0, [0])]
    assert prefix_groups([a + [1], a[:10] + [2]], min_shared=32) == [(0, [0]), (0, [1])]
    # two rows sharing more (same context post) do not stop the third joining ...
    b = list(range(100))
    rows = [b + [1], b + [2], b[:80] + [3, 4], b[:80] + [5, 6]]
    assert prefix_groups(rows, min_shared=32) == [(80, [0, 1, 2, 3])]
    # ... while a row that would lower the group's savings (another simulation) starts anew
    sim2 = b[:40] + [7] * 60
    rows = [b + [1], b + [2], b + [3], sim2 + [1], sim2 + [2]]
    assert prefix_groups(rows, min_shared=32) == [(100, [0, 1, 2]), (100, [3, 4])]


def _prompts(n_sims: int = 3, n_agents: int = 7) -> list[str]:
    out = []
    for s in range(n_sims):
        population = f"How the other users have reacted so far:\nstance: support {10 * s}%\n\n"
        for a in range(n_agents):
            shared, agent = prompt_parts(topic=f"Event {s}: a tower fell", population=population,
                                         context=f"source post {a % 3}",
                                         persona=f"user {a} with {a * 13} followers",
                                         dimension="stance", options=OPTS)
            out.append(shared + agent)
    return out


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_shared_scores_equal_plain_scores(tiny_hf, batch_size: int) -> None:
    prompts = _prompts()
    tiny_hf.batch_size = batch_size
    try:
        tiny_hf.prefix_sharing = False
        plain = tiny_hf.score(prompts, OPTS)
        tiny_hf.prefix_sharing = True
        shared = tiny_hf.score(prompts, OPTS)
        ids = tiny_hf.encode(prompts)
        groups = prefix_groups(ids)
        assert [len(r) for s, r in groups if s] == [7, 7, 7]  # one group per simulation
        np.testing.assert_allclose(shared, plain, atol=2e-5, rtol=0)
        # and a prompt's score does not depend on its neighbours beyond float tolerance
        alone = tiny_hf.score(prompts[7:14], OPTS)
        np.testing.assert_allclose(alone, plain[7:14], atol=2e-5, rtol=0)
    finally:
        tiny_hf.prefix_sharing, tiny_hf.batch_size = True, 8


def test_padding_to_a_multiple_changes_no_score_nor_text(tiny_hf) -> None:
    """On CUDA widths are rounded up to 64 tokens (fewer shapes for the attention kernels);
    with the prefix and the suffix passes both wider, scores and greedy texts stay the same."""
    prompts = _prompts()
    assert tiny_hf.pad_multiple == 1  # the CPU keeps exact widths
    try:
        out = {}
        for multiple in (1, 64):
            tiny_hf.pad_multiple = multiple
            out[multiple] = [tiny_hf.score(prompts, OPTS)]
            for sharing in (False, True):
                tiny_hf.prefix_sharing = sharing
                out[multiple].append(tiny_hf.generate(prompts[:9], max_new_tokens=8,
                                                      temperature=0))
    finally:
        tiny_hf.pad_multiple, tiny_hf.prefix_sharing = 1, True
    np.testing.assert_allclose(out[64][0], out[1][0], atol=2e-5, rtol=0)
    assert out[64][1:] == out[1][1:] and len(set(out[1][1])) > 1


@pytest.mark.parametrize(("temperature", "penalty"), [(0.0, 1.0), (0.8, 1.2)])
def test_shared_generation_equals_plain_generation(tiny_hf, temperature: float,
                                                   penalty: float) -> None:
    prompts = _prompts()
    seeds = list(range(100, 100 + len(prompts)))
    knobs = {"max_new_tokens": 12, "temperature": temperature, "top_p": 0.85, "top_k": 50,
             "repetition_penalty": penalty, "seeds": seeds}
    calls: list[int] = []
    real_sample = tiny_hf._sample

    def counting(p_ids, batch, *args):  # the shared path really runs
        calls.extend(shared for shared, _ in batch)
        return real_sample(p_ids, batch, *args)

    try:
        tiny_hf.prefix_sharing = False
        plain = tiny_hf.generate(prompts, **knobs)
        tiny_hf.prefix_sharing = True
        tiny_hf._sample = counting
        shared = tiny_hf.generate(prompts, **knobs)
    finally:
        tiny_hf.prefix_sharing = True
        del tiny_hf._sample
    assert sum(1 for s in calls if s > 0) >= 3 and all(s > 30 for s in calls if s)
    assert shared == plain
    assert len(set(plain)) > 1  # the prompts' own parts matter


@given(st.lists(st.tuples(st.integers(32, 200), st.lists(st.integers(1, 120), min_size=1,
                                                          max_size=40)),
                min_size=1, max_size=12),
       st.integers(1, 64), st.integers(64, 8192))
@settings(max_examples=300, deadline=None)
def test_pack_bounds(spec, batch_size: int, max_tokens: int) -> None:
    """Every row once; each batch within its row, token and padding bounds, unless it is a
    single piece that breaks a bound alone."""
    p_ids, groups = [], []
    for shared, suffixes in spec:
        rows = list(range(len(p_ids), len(p_ids) + len(suffixes)))
        p_ids += [[7] * shared + [8] * n for n in suffixes]
        groups.append((shared, rows))
    seen = []
    for batch in pack(groups, p_ids, batch_size, max_tokens):
        rows = [r for _, rs in batch for r in rs]
        seen += rows
        assert len({s for s, _ in batch}) >= 1 and all(len(rs) <= batch_size for _, rs in batch)
        if len(batch) == 1:
            continue
        widest = max(len(p_ids[r]) - s for s, rs in batch for r in rs)
        longest = max(s for s, _ in batch)
        padded = len(rows) * widest + len(batch) * longest
        real = sum(s + sum(len(p_ids[r]) - s for r in rs) for s, rs in batch)
        assert len(rows) <= batch_size and padded <= max_tokens
        assert padded <= (1 + MAX_PADDING) * real
    assert sorted(seen) == list(range(len(p_ids)))


def test_groups_of_several_simulations_share_a_batch(tiny_hf) -> None:
    ids = tiny_hf.encode(_prompts())
    groups = [g for g in prefix_groups(ids) if g[0]]
    batches = list(pack(groups, ids, batch_size=16, max_batch_tokens=16384))
    assert max(len(b) for b in batches) >= 2  # two simulations' rows in one forward


def test_padded_widths_follow_the_device() -> None:
    torch = pytest.importorskip("torch")
    assert prefix.pad_multiple("cpu") == 1
    assert prefix.pad_multiple("cuda:1") == prefix.pad_multiple(torch.device("cuda")) == 64
    assert prefix.padded_width([3, 7, 5], 1) == 7 and prefix.padded_width([3, 7, 5], 4) == 8
    assert prefix.padded_width([64], 64) == 64
    with pytest.raises(ValueError, match="multiple"):
        prefix.padded_width([3], 0)
