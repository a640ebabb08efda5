"""The transformers backend: a causal LM behind :class:`~mfray.llm.base.LanguageModel`, batched,
on a CPU or a GPU.

Choice scoring (the interface's rule, :mod:`mfray.llm.base`) computed here:

- every option's first token distinct -> ONE forward pass per prompt; the next-token logits at
  the prompt's last position, restricted to the options' first tokens and log-softmaxed. This is
  the distribution of decoding constrained to the options (once the first token is drawn the
  option is fixed); for single-token options it equals the full-sequence rule exactly;
- otherwise -> the full option log-likelihood (sum of token log-probs, logits at j-1 scoring
  token j), one sequence per prompt x option, log-softmaxed over the options.

Prompts that share a prefix are computed once per group (:mod:`mfray.llm.prefix`). torch and
transformers are imported lazily, so that importing the interface never loads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mfray.llm.base import ModelError, check_options, check_sampling
from mfray.llm.prefix import pack, pad, pad_multiple, prefill, prefix_groups, supports_sharing


def batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped into batches, longest first (less padding), each with at most
    ``batch_size`` rows and ``rows x longest <= max_batch_tokens`` (a lone long row still runs)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) >= batch_size
                      or (len(batch) + 1) * lengths[batch[0]] > max_batch_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def continuation_logprobs(model: Any, seqs: Sequence[Sequence[int]], n_cont: Sequence[int], *,
                          pad_id: int, side: str = "left", device: Any = "cpu",
                          multiple: int = 1) -> np.ndarray:
    """Sum of log-probs of the last ``n_cont[r]`` tokens of each sequence, one forward pass.

    Logits at position j-1 score token j; prompt and padding tokens are masked per row, so the
    result does not depend on the padding side or width (``multiple``). Left padding keeps
    only the needed logits.
    """
    import torch

    ids, mask, pos = pad(seqs, pad_id, side, device, multiple)
    width = ids.shape[1]
    keep = max(n_cont) + 1 if side == "left" else 0  # 0 = all positions
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                   logits_to_keep=keep).logits.float()
    first = width - logits.shape[1]  # sequence position of the first kept logit
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = ids[:, first + 1:]
    tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # target at kept index k sits at sequence position first + 1 + k
    tpos = torch.arange(first + 1, width, device=ids.device).unsqueeze(0)
    end = mask.sum(-1, keepdim=True) if side == "right" else torch.full_like(tpos[:, :1], width)
    start = end - torch.tensor(list(n_cont), device=ids.device).unsqueeze(-1)
    return ((tpos >= start) & (tpos < end)).mul(tok_lp).sum(-1).double().cpu().numpy()


def _top_filter(scores: Any, top_k: int, top_p: float) -> Any:
    """Row-wise top-k then nucleus filtering (masked logits set to -inf)."""
    import torch

    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1:
        srt, idx = scores.sort(dim=-1, descending=True)
        p = srt.softmax(-1)
        drop = p.cumsum(-1) - p >= top_p  # keep tokens until the mass reaches top_p (>= 1 token)
        scores = scores.scatter(-1, idx, srt.masked_fill(drop, float("-inf")))
    return scores


def chat_prompt(tokenizer: Any, system: str, user: str, model_id: str) -> str:
    """The tokenizer's chat template over a system and a user message, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{model_id} has no chat template; use raw prompts")
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt with the tokenizer's special tokens, never a doubled BOS (the
    rule of every local backend). One batched call per rule: a fast tokenizer encodes a batch
    in parallel, 0.16–0.19 ms a SmolLM2 prompt on this 2-core CPU against 0.43 one by one."""
    bos = tokenizer.bos_token
    has_bos = [bool(bos) and p.startswith(bos) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    for special in (True, False):
        rows = [i for i, b in enumerate(has_bos) if b != special]
        if rows:
            ids = tokenizer([prompts[i] for i in rows], add_special_tokens=special)["input_ids"]
            for i, x in zip(rows, ids, strict=True):
                out[i] = x
    return out


class LastEncoding:
    """:func:`encode_prompts` that keeps its last call's prompts and ids. The inference actor
    counts the tokens of the prompts it has just scored; with the ids kept, that is not a
    second tokenisation of every prompt (0.1–0.4 ms a prompt, outside the model's time)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._last: tuple[list[str], list[list[int]]] | None = None

    def __call__(self, prompts: Sequence[str]) -> list[list[int]]:
        prompts = list(prompts)
        if self._last is None or self._last[0] != prompts:
            self._last = (prompts, encode_prompts(self.tokenizer, prompts))
        return list(self._last[1])


def option_ids(tokenizer: Any, options: Sequence[str]) -> list[list[int]]:
    """Each option's token ids on its own, without special tokens."""
    ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    if any(not t for t in ids):
        raise ValueError(f"an option tokenises to nothing: {list(options)!r}")
    return ids


class HFModel:
    """A transformers causal LM behind the ``LanguageModel`` interface (CPU or GPU, batched).

    Batches hold at most ``batch_size`` sequences and ``max_batch_tokens`` padded tokens.
    ``first_token_scoring = False`` forces the full-sequence rule for every ``score`` call.
    ``prefix_sharing`` computes a prefix shared by consecutive prompts once
    (:mod:`mfray.llm.prefix`); the values equal the plain ones within float tolerance.
    """

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str, device: Any = None,
                 batch_size: int = 16, max_batch_tokens: int = 16384,
                 first_token_scoring: bool = True, prefix_sharing: bool = True) -> None:
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer, self.model_id = tokenizer, model_id
        self._encode = LastEncoding(tokenizer)
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.first_token_scoring = first_token_scoring
        self.prefix_sharing = prefix_sharing  # reuse the KV cache of shared prompt prefixes
        self.pad_multiple = pad_multiple(self.device)  # padded widths: fewer distinct shapes
        tok_pad = tokenizer.pad_token_id
        self.pad_id = tok_pad if tok_pad is not None else (tokenizer.eos_token_id or 0)
        gen_config = getattr(model, "generation_config", None)
        eos = gen_config.eos_token_id if gen_config is not None else None
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos))
        self.max_len = getattr(model.config, "max_position_embeddings", None)
        self.load_seconds = 0.0  # set by load_model

    def chat_prompt(self, system: str, user: str) -> str:
        """The tokenizer's chat template over a system and a user message, ready for the reply."""
        return chat_prompt(self.tokenizer, system, user, self.model_id)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt with the tokenizer's special tokens, never a doubled BOS."""
        return self._encode(prompts)

    def _option_ids(self, options: Sequence[str]) -> list[list[int]]:
        return option_ids(self.tokenizer, options)

    def _check_length(self, lengths: Sequence[int]) -> None:
        """Refuse prompts (by index) whose tokens won't fit the model's positions."""
        too_long = [i for i, n in enumerate(lengths) if self.max_len and n > self.max_len]
        if too_long:
            raise ModelError(f"{len(too_long)} prompts exceed the model's {self.max_len} "
                             f"positions", indices=too_long)

    def _run(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run a forward computation under inference mode; torch failures become ModelErrors."""
        import torch

        try:
            with torch.inference_mode():
                return fn()
        except RuntimeError as e:  # includes CUDA out-of-memory
            raise ModelError(f"{self.model_id}: {what} failed: {e}") from e

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """Log-probabilities of each option after each prompt, normalised over the options (the
        rule is in the module docstring); shape (len(prompts), len(options)), float64."""
        check_options(options)
        if not prompts:
            return np.zeros((0, len(options)))
        p_ids, o_ids = self.encode(prompts), self._option_ids(options)
        firsts = [o[0] for o in o_ids]
        if self.first_token_scoring and len(set(firsts)) == len(firsts):
            return self._run("scoring", lambda: self._score_first(p_ids, firsts))
        return self._run("scoring", lambda: self._score_full(p_ids, o_ids))

    def _score_first(self, p_ids: list[list[int]], firsts: list[int]) -> np.ndarray:
        import torch

        self._check_length([len(p) for p in p_ids])
        out = np.empty((len(p_ids), len(firsts)))
        cols = torch.tensor(firsts, device=self.device)
        for batch in self._work(p_ids, [len(p) for p in p_ids]):
            rows, logits = prefill(self.model, p_ids, batch, pad_id=self.pad_id,
                                   device=self.device, keep_cache=False,
                                   multiple=self.pad_multiple)[:2]
            out[rows] = torch.log_softmax(logits[:, cols], -1).double().cpu().numpy()
        return out

    def _work(self, p_ids: list[list[int]], cost: list[int]) -> list[Any]:
        """Batches for :func:`mfray.llm.prefix.prefill`: prompts that share a prefix with
        their neighbours packed across simulations, the others by ``cost`` (their tokens)."""
        groups = prefix_groups(p_ids) if self.prefix_sharing and supports_sharing(self.model) \
            else [(0, list(range(len(p_ids))))]
        plain = [r for shared, rows in groups if not shared for r in rows]
        work = list(pack([g for g in groups if g[0]], p_ids, self.batch_size,
                         self.max_batch_tokens))
        for batch in batches([cost[r] for r in plain], self.batch_size, self.max_batch_tokens):
            work.append([(0, [plain[b] for b in batch])])
        return work

    def _score_full(self, p_ids: list[list[int]], o_ids: list[list[int]]) -> np.ndarray:
        self._check_length([len(p) + max(len(o) for o in o_ids) for p in p_ids])
        pairs = [(i, j) for i in range(len(p_ids)) for j in range(len(o_ids))]
        seqs = [p_ids[i] + o_ids[j] for i, j in pairs]
        ll = np.empty(len(pairs))
        for rows in batches([len(s) for s in seqs], self.batch_size, self.max_batch_tokens):
            ll[rows] = continuation_logprobs(self.model, [seqs[r] for r in rows],
                                             [len(o_ids[pairs[r][1]]) for r in rows],
                                             pad_id=self.pad_id, device=self.device,
                                             multiple=self.pad_multiple)
        ll = ll.reshape(len(p_ids), len(o_ids))
        return ll - np.logaddexp.reduce(ll, axis=1, keepdims=True)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 repetition_penalty: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """Sample one continuation per prompt, each from its own seeded stream (numpy uniforms
        drawn per row), so a prompt's text does not depend on its batch (up to float rounding
        of the logits, which may flip a near-tie); greedy when
        temperature == 0. Stops at an EOS token; special tokens are left out of the text."""
        seeds = check_sampling(len(prompts), max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, top_k=top_k,
                               repetition_penalty=repetition_penalty, seeds=seeds)
        p_ids = self.encode(prompts)
        self._check_length([len(p) + max_new_tokens for p in p_ids])
        texts: list[str] = [""] * len(prompts)
        knobs = (max_new_tokens, temperature, top_p, top_k, repetition_penalty)
        for batch in self._work(p_ids, [len(p) + max_new_tokens for p in p_ids]):
            rows, new = self._run("generation", lambda batch=batch: self._sample(
                p_ids, batch, seeds, *knobs))
            for r, toks in zip(rows, new, strict=True):
                texts[r] = self.tokenizer.decode(toks, skip_special_tokens=True)
        return texts

    def _sample(self, p_ids: list[list[int]], batch: Any, seeds: list[int], max_new: int,
                temperature: float, top_p: float, top_k: int, penalty: float
                ) -> tuple[list[int], list[list[int]]]:
        """Decode one batch of :meth:`_work` together; returns its rows and their new tokens."""
        import torch

        rows, logits, cache, mask, pos = prefill(self.model, p_ids, batch, pad_id=self.pad_id,
                                                 device=self.device, multiple=self.pad_multiple)
        seeds = [seeds[r] for r in rows]
        p_ids = [p_ids[r] for r in rows]
        rngs = [np.random.default_rng(s) for s in seeds]
        eos = torch.tensor(self.eos_ids, device=self.device, dtype=torch.long)
        out: list[list[int]] = [[] for _ in p_ids]
        done = torch.zeros(len(p_ids), dtype=torch.bool, device=self.device)
        seen = None
        for step in range(max_new):
            scores = logits
            if penalty != 1.0:  # CTRL-style penalty over the row's own prompt tokens only
                if seen is None:
                    seen = torch.zeros_like(scores, dtype=torch.bool)
                    for r, p in enumerate(p_ids):
                        seen[r, torch.tensor(p, device=self.device)] = True
                pen = torch.where(scores > 0, scores / penalty, scores * penalty)
                scores = torch.where(seen, pen, scores)
            if temperature == 0:
                nxt = scores.argmax(-1)
            else:
                cum = _top_filter(scores / temperature, top_k, top_p).softmax(-1).cumsum(-1)
                u = torch.tensor([[g.random()] for g in rngs], device=self.device,
                                 dtype=cum.dtype) * cum[:, -1:]
                nxt = torch.searchsorted(cum, u, right=True).squeeze(-1).clamp_(
                    max=scores.shape[-1] - 1)
            for r, (t, d) in enumerate(zip(nxt.tolist(), done.tolist(), strict=True)):
                if not d:
                    out[r].append(t)
            done |= torch.isin(nxt, eos)
            if step == max_new - 1 or bool(done.all()):
                break
            if seen is not None:
                seen[torch.arange(len(p_ids)), nxt] = True
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            logits = self.model(input_ids=nxt.unsqueeze(-1), attention_mask=mask,
                                position_ids=pos, **cache).logits[:, -1].float()
        return rows, out

    def close(self) -> None:
        """Drop the weights (and the CUDA cache when on a GPU)."""
        import torch

        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
