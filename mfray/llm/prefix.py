"""Padded batches and shared-prefix reuse across simulations for the transformers backend
(architecture.md, "Where the speed comes from").

:func:`pad` lays token ids out as a padded batch (with position ids that count real tokens
only, so a sequence's positions never depend on its batch); training's losses pad the same way.

The agents of one simulation and round see the same shared prompt part; only their persona and
context differ. In the canonical order the inference actor gets them next to each other, so
:func:`prefix_groups` finds runs of consecutive prompts whose token ids share a long common
prefix, found on the token ids themselves (so a tokeniser merge across the template's
boundary can never make the shortcut wrong). :func:`pack` packs the groups of many
simulations into token-bounded batches with bounded padding, and :func:`prefill` runs a batch:
each group's prefix once, its key/value cache repeated for the group's rows, then every row's
own suffix. Choice scoring reads the next-token logits at each row's last token; generation
decodes on from the same cache. Both equal the plain computation within float tolerance
(``tests/test_llm_prefix.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

MIN_SHARED = 32  # tokens: below this, reuse is not worth a separate forward
MAX_PADDING = 0.25  # a packed batch's padded tokens stay within 1.25x its real tokens


#: On CUDA, a padded batch's width is rounded up to a multiple of this many tokens. Each new
#: width costs the GPU's attention a new kernel plan (cuDNN's attention on Hopper), and rounded
#: widths repeat. On an H200 (SmolLM2-135M shapes): training steps of batch 8 took 0.25 s with
#: exact widths while most widths were new, 0.08 s rounded to 64; scoring rounds of 1,600
#: prompts went from 1,060 to 1,433 decisions/s at batch 256 (2,288 and 2,137 at batch 1,024).
#: Elsewhere widths stay exact: on a CPU padding is compute.
CUDA_PAD_MULTIPLE = 64


def pad_multiple(device: Any) -> int:
    """The multiple padded widths are rounded up to on ``device`` (see CUDA_PAD_MULTIPLE)."""
    return CUDA_PAD_MULTIPLE if str(device).startswith("cuda") else 1


def padded_width(lengths: Sequence[int], multiple: int = 1) -> int:
    """The longest length rounded up to a multiple of ``multiple``."""
    if multiple < 1:
        raise ValueError(f"the padding multiple must be >= 1, not {multiple}")
    return -(-max(lengths) // multiple) * multiple


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str, device: Any = "cpu",
        multiple: int = 1) -> tuple:
    """(input_ids, attention_mask, position_ids) tensors, ``multiple`` dividing the width.
    Position ids count real tokens only, so a sequence's positions are the same whatever
    padding its batch needs."""
    import torch

    width = padded_width([len(s) for s in seqs], multiple)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[r, cols] = torch.tensor(list(s), dtype=torch.long)
        mask[r, cols] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


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
    """Decoder-only models whose forward takes a KV cache and explicit position ids."""
    cfg = getattr(model, "config", None)
    return cfg is not None and not getattr(cfg, "is_encoder_decoder", False) \
        and "position_ids" in inspect.signature(model.forward).parameters


def _cache_kw(module: Any) -> str:
    """The forward's keyword for the KV cache: ``cache`` since transformers 5.24."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters \
        else "past_key_values"


Batch = list[tuple[int, list[int]]]  # (shared length, rows) pieces run together


def pack(groups: Sequence[tuple[int, list[int]]], p_ids: Sequence[Sequence[int]],
         batch_size: int, max_batch_tokens: int, max_padding: float = MAX_PADDING
         ) -> Iterator[Batch]:
    """Groups of :func:`prefix_groups` packed into batches across simulations. A group's rows
    are taken longest suffix first and cut into pieces of at most ``batch_size``; pieces,
    widest suffix first, fill a batch while it has at most ``batch_size`` rows, at most
    ``max_batch_tokens`` padded tokens (prefixes once per piece, suffixes once per row), and
    padded tokens at most ``1 + max_padding`` times its real tokens. A piece that breaks a
    bound alone still runs alone."""
    def suffix(shared: int, r: int) -> int:
        return len(p_ids[r]) - shared

    pieces = []
    for shared, rows in groups:
        rows = sorted(rows, key=lambda r: (-suffix(shared, r), r))
        pieces += [(shared, rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    pieces.sort(key=lambda pc: (-suffix(pc[0], pc[1][0]), pc[1][0]))
    batch: Batch = []
    n_rows = real = 0
    for shared, rows in pieces:
        rows_after = n_rows + len(rows)
        real_after = real + shared + sum(suffix(shared, r) for r in rows)
        first = batch[0] if batch else (shared, rows)  # pieces come widest suffix first
        widest = suffix(first[0], first[1][0])
        longest = max([shared, *(s for s, _ in batch)])
        padded = rows_after * widest + (len(batch) + 1) * longest
        if batch and (rows_after > batch_size or padded > max_batch_tokens
                      or padded > (1 + max_padding) * real_after):
            yield batch
            batch, rows_after, real_after = [], len(rows), shared + sum(suffix(shared, r)
                                                                        for r in rows)
        batch.append((shared, rows))
        n_rows, real = rows_after, real_after
    if batch:
        yield batch


def prefill(model: Any, p_ids: Sequence[Sequence[int]], batch: Batch, *, pad_id: int,
            device: Any, keep_cache: bool = True, multiple: int = 1
            ) -> tuple[list[int], Any, dict[str, Any], Any, Any]:
    """Run a batch's prompts: each piece's shared prefix once (all prefixes in one
    left-padded pass), its KV cache repeated for the piece's rows, then every row's own
    suffix, left-padded after its prefix, with position ids that continue the row's real
    prefix. Returns the rows in batch order, the next-token logits at each row's last token,
    the cache as forward keyword arguments, the attention mask and the position ids (for
    decoding on). Pieces with shared length 0 must come alone: then it is the plain
    left-padded forward. Both passes' widths are rounded up to ``multiple``. The values equal
    the plain computation within float tolerance."""
    import torch
    from transformers import DynamicCache

    rows = [r for _, rs in batch for r in rs]
    shared = [s for s, rs in batch for _ in rs]
    kw = {_cache_kw(model): DynamicCache(config=model.config), "use_cache": True} \
        if keep_cache or max(shared) else {}
    ids, mask, pos = pad([p_ids[r][s:] for r, s in zip(rows, shared, strict=True)], pad_id,
                         "left", device, multiple)
    if max(shared):
        if not min(shared):
            raise ValueError("prefill: pieces without a shared prefix go in their own batch")
        pre_ids, pre_mask, pre_pos = pad([p_ids[rs[0]][:s] for s, rs in batch], pad_id,
                                         "left", device, multiple)
        model(input_ids=pre_ids, attention_mask=pre_mask, position_ids=pre_pos,
              logits_to_keep=1, **kw)
        which = torch.tensor([g for g, (_, rs) in enumerate(batch) for _ in rs], device=device)
        next(v for v in kw.values() if isinstance(v, DynamicCache)).batch_select_indices(which)
        mask = torch.cat([pre_mask[which], mask], dim=1)
        pos = pos + torch.tensor(shared, device=device).unsqueeze(1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1,
                   **kw).logits[:, -1].float()
    return rows, logits, kw, mask, pos
