"""Shared-prefix reuse for choice scoring (architecture.md, "Where the speed comes from").

The agents of one simulation and round see the same shared prompt part; only their persona and
context differ. In the canonical order the inference actor scores them next to each other, so
:func:`prefix_groups` finds runs of consecutive prompts whose token ids share a long common
prefix, found on the token ids themselves (so a tokeniser merge across the template's
boundary can never make the shortcut wrong). :func:`score_first_shared` runs each shared prefix
once, then every suffix on a copy of its key/value cache expanded over the batch, and reads the
next-token logits at each suffix's last token: the same values as the plain computation, within
float tolerance (``tests/test_prefix_cache.py``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_SHARED = 32  # tokens: below this, reuse is not worth a separate forward


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_groups(p_ids: Sequence[Sequence[int]], min_shared: int = MIN_SHARED
                  ) -> list[tuple[int, list[int]]]:
    """Consecutive rows as ``(shared length, rows)``. A group's shared length is the common
    prefix of all its rows, capped so that every row keeps at least one token of its own. A
    row joins the group when it shares at least ``min_shared`` tokens with the group's first
    row and joining does not lower the tokens the group saves (shared length × (rows − 1)):
    so two agents replying to the same post do not stop a third from joining, while the
    first agent of another simulation, which shares only the instructions, starts a new
    group. Groups of one row have shared length 0 (scored the plain way)."""
    groups: list[tuple[int, list[int]]] = []
    start, shared = 0, 0
    for i in range(1, len(p_ids) + 1):
        if i < len(p_ids):
            n = i - start  # rows in the group so far
            cand = min(common_prefix(p_ids[start], p_ids[i]), len(p_ids[i]) - 1,
                       len(p_ids[start]) - 1, shared if n > 1 else len(p_ids[i]))
            if cand >= min_shared and cand * n >= shared * (n - 1):
                shared = cand
                continue
        groups.append((shared if i > start + 1 else 0, list(range(start, i))))
        start, shared = i, 0
    return groups


def supports_sharing(model: Any) -> bool:
    """Models whose logits are the output head applied to the decoder's last hidden state
    (no soft-capping or other post-processing) and whose cache can be expanded."""
    cfg = getattr(model, "config", None)
    return (cfg is not None and not getattr(cfg, "final_logit_softcapping", None)
            and callable(getattr(model, "get_decoder", None))
            and model.get_output_embeddings() is not None)


def _cache_kw(module: Any) -> str:
    """The forward's keyword for the KV cache: ``cache`` since transformers 5.24."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters \
        else "past_key_values"


def _prefix_cache(model: Any, ids: Sequence[int], device: Any) -> Any:
    import torch
    from transformers import DynamicCache

    x = torch.tensor([list(ids)], dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True, logits_to_keep=1,
          **{_cache_kw(model): cache})
    return cache  # filled in place


def expanded_prefix_cache(model: Any, ids: Sequence[int], n: int, device: Any) -> dict[str, Any]:
    """The KV cache of ``ids`` run once and repeated for a batch of ``n`` rows, as the forward's
    keyword arguments (generation continues it in place)."""
    cache = _prefix_cache(model, ids, device)
    cache.batch_repeat_interleave(n)
    return {_cache_kw(model): cache}


def score_first_shared(model: Any, p_ids: Sequence[Sequence[int]], firsts: Sequence[int],
                       rows: Sequence[int], shared: int, *, pad_id: int, device: Any,
                       batch_size: int, max_batch_tokens: int) -> np.ndarray:
    """First-token option log-probabilities of ``rows`` (which share ``shared`` tokens),
    computed with one forward of the prefix and the suffixes on its cache."""
    import torch

    from mfray.llm import batches

    cache = _prefix_cache(model, p_ids[rows[0]][:shared], device)
    cols = torch.tensor(list(firsts), device=device)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    suffixes = [list(p_ids[r][shared:]) for r in rows]
    out = np.empty((len(rows), len(firsts)))
    for batch in batches([len(s) for s in suffixes], batch_size, max(1, max_batch_tokens)):
        width = max(len(suffixes[b]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for k, b in enumerate(batch):  # right padding: positions continue after the prefix
            ids[k, :len(suffixes[b])] = torch.tensor(suffixes[b])
            mask[k, shared:shared + len(suffixes[b])] = 1
        pos = torch.arange(shared, shared + width).unsqueeze(0).expand(len(batch), -1)
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(batch))
        hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device),
                         position_ids=pos.to(device), use_cache=True,
                         **{_cache_kw(decoder): past}).last_hidden_state
        last = torch.tensor([len(suffixes[b]) - 1 for b in batch], device=device)
        h = hidden[torch.arange(len(batch), device=device), last]
        logits = head(h).float()
        out[batch] = torch.log_softmax(logits[:, cols], -1).double().cpu().numpy()
    return out
