"""IB-Tune's configuration: the simulator's sections (so examples are built exactly as the
simulator renders prompts) plus a ``train`` section. Frozen dataclasses, loaded from TOML or
YAML with ``section.key=value`` overrides, like :class:`~mfray.config.RunConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from mfray.config import (
    MeanFieldConfig,
    PolicyConfig,
    ResourcesConfig,
    SimConfig,
    section,
    setting,
)
from mfray.errors import ConfigError
from mfray.variants import TRAIN_VARIANTS, variant


@dataclass(frozen=True)
class TrainParams:
    """One training run. ``held_out`` events are never read (leave-one-event-out)."""

    variant: str = setting("mf", "whose prompts the examples use: " + ", ".join(TRAIN_VARIANTS)
                           + " (sft: the state prompts, the fine-tuning baseline without a "
                           "mean field)")
    held_out: tuple[str, ...] = setting((), "events never read (leave-one-event-out)")
    max_examples: int | None = setting(None, "a seeded subsample of the examples (null: all)")
    from_agent: int = setting(0, "skip each event's first agents (sim.warmup: rollout agents "
                              "only)")
    val_examples: int = setting(
        0, "policy only: this many examples of the training events (a seeded draw) kept out "
        "of training and scored after it, by the tuned and the base model and against the "
        "training examples' label frequencies (validation.json); 0: no validation")
    mix_copies: int = setting(
        0, "resampled events (mfray/data/mix.py): train on this many copies of each training "
        "event, each with a label mix drawn from Dirichlet(train.mix_alpha), instead of on the "
        "events as they are, so that only the mean field tells the mix (0: the real events)")
    mix_alpha: float = setting(1.0, "the Dirichlet concentration of train.mix_copies' mixes")
    onpolicy_runs: tuple[str, ...] = setting(
        (), "policy only: simulation runs of training events (`mfray simulate` with the "
        "policy being tuned, one seed); each adds an example per rollout agent whose mean "
        "field is the one the run built from its own actions, labelled with the real action, "
        "to the teacher-forced examples before train.max_examples draws")
    lr: float = setting(2e-4, "the peak learning rate (AdamW)")
    epochs: int = setting(1, "passes over the examples")
    max_steps: int | None = setting(None, "stop after this many steps (null: the epochs')")
    batch_size: int = setting(8, "examples per step, global, over all workers")
    warmup_ratio: float = setting(0.1, "the share of the steps the learning rate warms up in")
    schedule: Literal["linear", "cosine", "constant"] = setting(
        "cosine", "the learning rate's decay after the warm-up")
    max_grad_norm: float = setting(1.0, "gradients are clipped to this norm")
    weight_decay: float = setting(0.0, "AdamW's weight decay")
    seed: int = setting(0, "the seed of the subsample, the example order and the adapter's "
                   "initialisation")
    bf16: Literal["auto", "on", "off"] = setting(
        "auto", "bfloat16 weights: auto = where the hardware computes bfloat16, as policy.bf16")
    max_prompt_tokens: int = setting(1024, "longer prompts are cut from the left")
    lora_r: int = setting(8, "the LoRA rank (peft)")
    lora_alpha: int = setting(16, "the LoRA scale")
    lora_dropout: float = setting(0.0, "the LoRA dropout")
    target_modules: tuple[str, ...] = setting((), "the modules LoRA adapts; empty: every "
                                              "attention and MLP projection")
    lora_last_layers: int | None = setting(None, "adapt only the top n layers (a shorter "
                                           "backward); null: all")
    checkpoint_every: int = setting(50, "steps between checkpoints; each is a "
                                    "ray.train.report, of which Ray Train takes one per 2 s "
                                    "poll")
    log_every: int = setting(5, "steps between progress lines (metrics.jsonl has every step)")
    estimator: Literal["reinforce", "best-of-k"] = setting(
        "reinforce", "meanfield: REINFORCE with the group-mean baseline, or SFT on the best "
        "of train.k summaries")
    k: int = setting(4, "meanfield: K, summaries sampled per window")
    beta: float = setting(0.1, "meanfield: β, the weight of the compression term (log q − log "
                        "prior)")
    sample_temperature: float = setting(1.0, "meanfield: the temperature of the sampled "
                                        "summaries")
    policy_adapter: str | None = setting(None, "meanfield: the policy adapter whose "
                                         "likelihood is the relevance term")

    def __post_init__(self) -> None:
        if self.variant not in TRAIN_VARIANTS:
            raise ConfigError(f"train.variant {self.variant!r} is not one of {TRAIN_VARIANTS}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.lora_r < 1 \
                or self.checkpoint_every < 1 or self.log_every < 1 or self.k < 2 \
                or not 0 <= self.warmup_ratio < 1 \
                or self.max_grad_norm <= 0 or self.beta < 0 or self.mix_copies < 0 \
                or self.mix_alpha <= 0 or self.val_examples < 0:
            raise ConfigError("need train.lr > 0, epochs >= 1, batch_size >= 1, lora_r >= 1, "
                              "checkpoint_every >= 1, log_every >= 1, k >= 2, "
                              "0 <= warmup_ratio < 1, max_grad_norm > 0, beta >= 0, "
                              "mix_copies >= 0, mix_alpha > 0, val_examples >= 0")
        if self.onpolicy_runs and (not variant(self.prompt_variant).shows or self.mix_copies):
            raise ConfigError("train.onpolicy_runs: " + (
                f"the {self.variant} prompts show no population" if self.mix_copies == 0 else
                "not with train.mix_copies, which draws its copies in-process; simulate "
                "copies made by `mfray data mix` and name them in sim.events instead"))
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("train.max_steps must be >= 1 (or null)")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError("train.max_examples must be >= 1 (or null)")

    @property
    def prompt_variant(self) -> str:
        """The simulator variant whose prompts the examples use."""
        return variant(self.variant).prompt_variant


@dataclass(frozen=True)
class TrainResources(ResourcesConfig):
    """Where a training run executes: the simulator's resources plus Ray Train's workers."""

    num_workers: int = setting(1, "Ray Train workers; 0: in-process (Ray Train's local mode)")
    use_gpu: bool = setting(False, "one GPU per Ray Train worker")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_workers < 0:
            raise ConfigError(f"resources.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs: how to build its examples and how to train."""

    sim: SimConfig = section(SimConfig, "how the examples are built: as the simulator "
                             "renders its prompts")
    policy: PolicyConfig = section(PolicyConfig, "the base model (policy.model) and its "
                                   "prompts")
    meanfield: MeanFieldConfig = section(MeanFieldConfig, "the text mean field's summaries "
                                         "in the examples")
    train: TrainParams = section(TrainParams, "how to train: examples, optimisation, LoRA, "
                                 "the mean-field model's information bottleneck")
    resources: TrainResources = section(TrainResources, "where the training runs")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
