"""What one training step computes, for each model IB-Tune tunes (method.md §4).

A task holds the model with its LoRA adapter and the tokenised examples; ``loss(model, idx)``
returns the *sum* of the per-example losses of ``idx`` (the training loop,
:mod:`mfray.train.worker`, scales it to the global batch) and extra per-example sums to report
(``extra_names``).

- :class:`PolicyTask`: choice mode, cross-entropy over the label options scored exactly as the
  simulator scores them (the first token of each option when those differ, the whole option
  otherwise); text mode, token NLL of the real post after the prompt.
- :class:`MeanFieldTask`: the information-bottleneck objective for the text mean field: ``K``
  sampled summaries per window, reward = mean log-likelihood of the next round's real actions
  under the (frozen) policy − β (log q − log prior), REINFORCE with the group-mean baseline or
  SFT on the best of ``K`` (``train.estimator``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mfray.errors import ConfigError
from mfray.llm import HFModel, load_model, model_input
from mfray.meanfield import NO_REACTIONS, NumericMeanField
from mfray.policy import clean_summary, population_text, prompt_parts
from mfray.prompts import render
from mfray.train.config import TrainConfig
from mfray.train.losses import add_lora, choice_loss, sequence_logprobs, text_nll
from mfray.variants import variant


def option_ids(hf: HFModel, options: Sequence[str]) -> list[list[int]]:
    """The options' token ids under the simulator's scoring rule (mfray.llm.hf): first tokens when
    they are distinct, whole options otherwise."""
    ids = hf._option_ids(options)
    firsts = [o[0] for o in ids]
    if hf.first_token_scoring and len(set(firsts)) == len(firsts):
        return [[f] for f in firsts]
    return ids


class _LoraTask:
    extra_names: tuple[str, ...] = ()

    def __init__(self, cfg: TrainConfig, device: Any, hf: HFModel | None = None) -> None:
        self.cfg = cfg
        # bf16 base weights where the device computes them (train.bf16, the simulator's
        # rule: mfray.llm.load.model_dtype); peft keeps the adapters in float32
        self.hf = hf or load_model(cfg.policy.model, device=str(device), bf16=cfg.train.bf16)
        t = cfg.train
        self.model = add_lora(self.hf.model, r=t.lora_r, alpha=t.lora_alpha,
                              dropout=t.lora_dropout, target_modules=list(t.target_modules) or None,
                              last_layers=t.lora_last_layers)
        self.model.train()
        self.pad_id = self.hf.pad_id

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered prompts as the model reads them, cut from the left when
        longer than ``train.max_prompt_tokens``."""
        cap = self.cfg.train.max_prompt_tokens
        return [ids[-cap:] for ids in self.hf.encode([model_input(self.hf, p) for p in prompts])]

    def save_adapter(self, path: Path) -> None:
        self.model.save_pretrained(path)

    def load_adapter(self, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(path / "adapter_model.safetensors"))


class PolicyTask(_LoraTask):
    """The policy: ``(topic, persona, mean field) -> real action``."""

    def __init__(self, cfg: TrainConfig, table: pa.Table, device: Any,
                 hf: HFModel | None = None) -> None:
        super().__init__(cfg, device, hf)
        rows = table.to_pylist()
        self.n_examples = len(rows)
        self.mode = rows[0]["mode"]
        self.prompt_ids = self.encode([r["prompt"] for r in rows])
        if self.mode == "choice":
            self.extra_names = ("accuracy",)
            self.options = [tuple(r["options"]) for r in rows]
            self.labels = [int(r["label_index"]) for r in rows]
            self.option_ids = {o: option_ids(self.hf, o) for o in set(self.options)}
        else:
            tok = self.hf.tokenizer
            self.targets = [tok(r["real_text"] or "", add_special_tokens=False)["input_ids"]
                            for r in rows]

    def loss(self, model: Any, idx: Sequence[int]) -> tuple[Any, list[float]]:
        import torch

        if self.mode == "text":
            mean = text_nll(model, [self.prompt_ids[i] for i in idx],
                            [self.targets[i] for i in idx], self.pad_id)
            return mean * len(idx), []  # the batch's per-token mean, counted per example
        total, correct = torch.zeros(()), 0.0
        for opts in dict.fromkeys(self.options[i] for i in idx):
            group = [i for i in idx if self.options[i] == opts]
            labels = [self.labels[i] for i in group]
            mean, logp = choice_loss(model, [self.prompt_ids[i] for i in group],
                                     self.option_ids[opts], labels, self.pad_id)
            total = total + mean * len(group)
            correct += float((logp.argmax(-1).cpu() == torch.tensor(labels)).sum())
        return total, [correct]


class MeanFieldTask(_LoraTask):
    """The text mean field's model ``q``: the information bottleneck of method.md §4."""

    extra_names = ("reward", "relevance", "compression")

    def __init__(self, cfg: TrainConfig, table: pa.Table, device: Any,
                 hf: HFModel | None = None, policy: HFModel | None = None) -> None:
        # the relevance term shows the policy the summary alone, as the mf-text prompts do
        if variant(cfg.train.variant).shows != ("text",):
            raise ConfigError("mean-field tuning trains the mf-text summary model: set "
                              "train.variant=mf-text")
        super().__init__(cfg, device, hf)
        self.rows = table.to_pylist()
        self.n_examples = len(self.rows)
        self.policy = policy or load_model(cfg.policy.model, device=str(device),
                                           adapter=cfg.train.policy_adapter)
        self.prompt_ids = self.encode([r["prompt"] for r in self.rows])
        topic_prior = {r["topic"] for r in self.rows}
        # the prior r: the frozen base model given only the summary instruction
        self.prior_ids = dict(zip(sorted(topic_prior), self.encode([
            render("meanfield", {"topic": t}, {"previous": NO_REACTIONS, "actions": "- none"})
            for t in sorted(topic_prior)]), strict=True))
        self.space: dict[str, tuple[str, ...]] = {}

    def sample(self, i: int, k: int) -> list[list[int]]:
        """``k`` summaries of window ``i`` from ``q`` (token ids, without the prompt)."""
        import torch

        ids = torch.tensor([self.prompt_ids[i]] * k, device=self.hf.device)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                temperature=self.cfg.train.sample_temperature, top_k=0, top_p=1.0,
                max_new_tokens=self.cfg.meanfield.max_new_tokens,
                pad_token_id=self.pad_id, eos_token_id=self.hf.eos_ids or None)
        gen = out[:, ids.shape[1]:].tolist()
        return [_until_eos(g, self.hf.eos_ids, self.pad_id) or [self.pad_id] for g in gen]

    def relevance(self, row: dict[str, Any], summaries: Sequence[str]) -> np.ndarray:
        """Mean log-likelihood of the next round's real actions under the policy, for each
        summary shown as the ``mf-text`` population block."""
        out = np.zeros(len(summaries))
        agents = row["next_agents"]
        for k, summary in enumerate(summaries):
            total, n = 0.0, 0
            block = population_text("mf-text", meanfield=NumericMeanField({}), history=[],
                                    label_space={}, summary=summary)
            for dim in self._dims(agents):
                opts = self.space[dim]
                items = [(a, json.loads(a["labels"]).get(dim)) for a in agents]
                items = [(a, lab) for a, lab in items if lab is not None]
                if not items:
                    continue
                prompts = [model_input(self.policy, "".join(prompt_parts(
                    topic=row["topic"], population=block, context=a["context"],
                    persona=a["persona"], dimension=dim, options=opts))) for a, _ in items]
                logp = self.policy.score(prompts, opts)
                total += float(sum(logp[j, opts.index(lab)] for j, (_, lab) in enumerate(items)))
                n += len(items)
            out[k] = total / max(1, n)
        return out

    def _dims(self, agents: Sequence[dict[str, Any]]) -> list[str]:
        if not self.space:
            raise ConfigError("MeanFieldTask.space (the label space) is not set")
        return [d for d in self.space if any(json.loads(a["labels"]).get(d) for a in agents)]

    def loss(self, model: Any, idx: Sequence[int]) -> tuple[Any, list[float]]:
        import torch

        k, beta = self.cfg.train.k, self.cfg.train.beta
        total = torch.zeros(())
        stats = np.zeros(3)
        for i in idx:
            row = self.rows[i]
            gen = self.sample(i, k)
            texts = [clean_summary(self.hf.tokenizer.decode(g, skip_special_tokens=True)) or ""
                     for g in gen]
            logq = sequence_logprobs(model, [self.prompt_ids[i] + g for g in gen],
                                     [len(g) for g in gen], self.pad_id)
            with torch.no_grad(), self.model.disable_adapter():
                logr = sequence_logprobs(self.model, [self.prior_ids[row["topic"]] + g
                                                      for g in gen], [len(g) for g in gen],
                                         self.pad_id)
            rel = self.relevance(row, texts)
            comp = (logq.detach() - logr).cpu().numpy()
            reward = rel - beta * comp
            if self.cfg.train.estimator == "reinforce":
                adv = torch.tensor(reward - reward.mean(), dtype=logq.dtype, device=logq.device)
                total = total - (adv * logq).mean()
            else:  # best-of-K: SFT on the best summary, per token
                best = int(np.argmax(reward))
                total = total - logq[best] / max(1, len(gen[best]))
            stats += [reward.mean(), rel.mean(), comp.mean()]
        return total, stats.tolist()


def _until_eos(ids: list[int], eos: Sequence[int], pad: int) -> list[int]:
    out = []
    for t in ids:
        if t in eos or t == pad:
            break
        out.append(t)
    return out


def make_task(kind: str, cfg: TrainConfig, table: pa.Table, device: Any) -> Any:
    if kind == "policy":
        return PolicyTask(cfg, table, device)
    from mfray.data.schema import read_dataset

    task = MeanFieldTask(cfg, table, device)
    task.space = {d: tuple(o) for d, o in read_dataset(cfg.sim.data).label_space.items()}
    return task
