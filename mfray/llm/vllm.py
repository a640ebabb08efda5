"""The vLLM backend (``policy.engine = "vllm"``): one long-lived engine per inference actor.

The engine keeps automatic prefix caching on, so the part of the prompt that a simulation's
agents share is computed once per round and reused, across requests and across rounds while it
stays in the cache. Choice scoring follows the transformers backend's rule (:mod:`mfray.llm.hf`):

- every option's first token distinct -> one request per prompt for a single next token,
  restricted to the options' first tokens (``allowed_token_ids``) with the engine's
  *processed* log-probabilities (``logprobs_mode="processed_logprobs"``): the next-token
  distribution restricted to the options and renormalised, which is the transformers
  backend's first-token rule. These requests use the prefix cache;
- otherwise -> the full option log-likelihood from the prompt log-probabilities of
  ``prompt + option`` (``prompt_logprobs=0``), log-softmaxed over the options.

Generation uses the paper's sampling parameters with one seed per request. Adapters are LoRA
requests on the one engine; changing the adapter resets the prefix cache.

Install with ``pip install 'mfray[vllm]'`` on a CUDA machine; the import is guarded so that
the rest of mfray never needs vLLM.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfray.llm.base import ModelError, check_options, check_sampling
from mfray.llm.hf import LastEncoding, chat_prompt, option_ids
from mfray.llm.load import transformers_dir


def _vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ModelError("policy.engine = vllm needs vLLM on a CUDA machine: "
                         "pip install 'mfray[vllm]'") from e
    return vllm


class VLLMModel:
    """A vLLM engine behind the ``LanguageModel`` interface."""

    def __init__(self, spec: str | Path | None = None, *, adapter: str | Path | None = None,
                 gpu_memory_utilization: float = 0.85, max_lora_rank: int = 64,
                 lora: bool = False, llm: Any = None) -> None:
        """``lora``: allow adapters even when none is given now (:meth:`set_adapter` later)."""
        vllm = _vllm()
        path = transformers_dir(spec) if spec is None or Path(str(spec)).exists() else spec
        self.model_id = Path(str(path)).name
        self.llm = llm if llm is not None else vllm.LLM(
            model=str(path), enable_prefix_caching=True, enable_lora=lora or adapter is not None,
            max_lora_rank=max_lora_rank, logprobs_mode="processed_logprobs",
            gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=False)
        self.tokenizer = self.llm.get_tokenizer()
        self._encode = LastEncoding(self.tokenizer)
        self._lora: Any = None
        self._lora_ids = 0
        self.set_adapter(adapter)

    def set_adapter(self, adapter: str | Path | None) -> None:
        """Use a LoRA adapter directory (or none) for the following calls. The prefix cache is
        reset when the adapter changes, so no cached prefix of other weights is reused."""
        path = str(Path(adapter).expanduser().resolve()) if adapter is not None else None
        if path == (self._lora.lora_path if self._lora is not None else None):
            return
        if path is None:
            self._lora = None
        else:
            from vllm.lora.request import LoRARequest

            self._lora_ids += 1
            self._lora = LoRARequest(f"adapter-{self._lora_ids}", self._lora_ids, path)
        self.llm.reset_prefix_cache()

    def chat_prompt(self, system: str, user: str) -> str:
        return chat_prompt(self.tokenizer, system, user, self.model_id)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        return self._encode(prompts)

    def _run(self, what: str, prompts: list[list[int]], params: Any) -> list[Any]:
        vllm = _vllm()
        try:
            outs = self.llm.generate([vllm.TokensPrompt(prompt_token_ids=p) for p in prompts],
                                     params, use_tqdm=False, lora_request=self._lora)
        except (RuntimeError, ValueError) as e:  # includes CUDA out-of-memory
            raise ModelError(f"{self.model_id}: {what} failed: {e}") from e
        if len(outs) != len(prompts):
            raise ModelError(f"{self.model_id}: {what}: {len(outs)} outputs for "
                             f"{len(prompts)} prompts")
        return list(outs)

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """Log-probabilities of each option after each prompt, normalised over the options."""
        check_options(options)
        if not prompts:
            return np.zeros((0, len(options)))
        p_ids, o_ids = self.encode(prompts), option_ids(self.tokenizer, options)
        firsts = [o[0] for o in o_ids]
        if len(set(firsts)) == len(firsts):
            ll = self._first_token(p_ids, firsts)
        else:
            ll = self._full(p_ids, o_ids)
        return ll - np.logaddexp.reduce(ll, axis=1, keepdims=True)

    def _first_token(self, p_ids: list[list[int]], firsts: list[int]) -> np.ndarray:
        params = _vllm().SamplingParams(max_tokens=1, temperature=1.0,
                                        allowed_token_ids=list(firsts), logprobs=len(firsts))
        out = np.empty((len(p_ids), len(firsts)))
        bad = []
        for i, res in enumerate(self._run("scoring", p_ids, params)):
            step = (res.outputs[0].logprobs or [None])[0] if res.outputs else None
            if step is None or any(t not in step for t in firsts):
                bad.append(i)
                continue
            out[i] = [step[t].logprob for t in firsts]
        if bad:
            raise ModelError(f"{self.model_id}: the engine returned no log-probabilities for "
                             "the options (vLLM >= 0.10.2 with logprobs_mode is needed)",
                             indices=bad)
        return out

    def _full(self, p_ids: list[list[int]], o_ids: list[list[int]]) -> np.ndarray:
        params = _vllm().SamplingParams(max_tokens=1, prompt_logprobs=0)
        seqs = [p + o for p in p_ids for o in o_ids]
        ll = np.empty(len(seqs))
        bad: set[int] = set()
        for k, res in enumerate(self._run("scoring", seqs, params)):
            n = len(o_ids[k % len(o_ids)])
            steps = (res.prompt_logprobs or [])[len(seqs[k]) - n:]
            if len(steps) != n or any(s is None or t not in s
                                      for s, t in zip(steps, seqs[k][-n:], strict=True)):
                bad.add(k // len(o_ids))
                continue
            ll[k] = sum(s[t].logprob for s, t in zip(steps, seqs[k][-n:], strict=True))
        if bad:
            raise ModelError(f"{self.model_id}: missing prompt log-probabilities",
                             indices=sorted(bad))
        return ll.reshape(len(p_ids), len(o_ids))

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 repetition_penalty: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """One continuation per prompt from its own seed; greedy when temperature == 0."""
        seeds = check_sampling(len(prompts), max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, top_k=top_k,
                               repetition_penalty=repetition_penalty, seeds=seeds)
        if not prompts:
            return []
        sp = _vllm().SamplingParams
        params = [sp(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                     top_k=top_k if top_k > 0 else -1, repetition_penalty=repetition_penalty,
                     seed=s) for s in seeds]
        outs = self._run("generation", self.encode(prompts), params)
        return [res.outputs[0].text if res.outputs else "" for res in outs]

    def close(self) -> None:
        """Drop the engine and free its GPU memory."""
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
