"""IB-Tune's configuration: the simulator's sections (so examples are built exactly as the
simulator renders prompts) plus a ``train`` section. Frozen dataclasses, loaded from TOML or
YAML with ``section.key=value`` overrides, like :class:`~mfray.config.RunConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mfray.config import MeanFieldConfig, PolicyConfig, ResourcesConfig, SimConfig
from mfray.errors import ConfigError
from mfray.variants import TRAIN_VARIANTS, variant


@dataclass(frozen=True)
class TrainParams:
    """One training run. ``held_out`` events are never read (leave-one-event-out)."""

    variant: str = "mf"
    held_out: tuple[str, ...] = ()
    max_examples: int | None = None  # a seeded subsample of the examples (None: all)
    from_agent: int = 0  # skip each event's first agents (sim.warmup: rollout agents only)
    # policy only: this many examples of the training events (a seeded draw) kept out of
    # training and scored after it, by the tuned and the base model and against the training
    # examples' label frequencies (validation.json); 0: no validation, the sample as before
    val_examples: int = 0
    # resampled events (mfray/data/mix.py): train on this many copies of each training event,
    # each with a label mix drawn from Dirichlet(mix_alpha), instead of on the events as they
    # are, so that only the mean field tells the mix (0: the real events)
    mix_copies: int = 0
    mix_alpha: float = 1.0
    # on-policy examples (policy only): simulation runs of training events (`mfray simulate`
    # with the policy being tuned, one seed); each adds an example per rollout agent whose mean
    # field is the one the run built from its own actions, labelled with the real action
    # (mfray/train/data.py), to the teacher-forced examples before `max_examples` draws
    onpolicy_runs: tuple[str, ...] = ()
    # policy only, sim.meanfield_form=tally: each training example this many times, each with
    # its tally's words in an order of its own (a seeded draw), so that the policy learns to
    # read the counts, not where the words stand; 0: the order the simulator writes
    # (validation examples always keep it)
    tally_orders: int = 0
    # optimisation
    lr: float = 2e-4
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8  # global, over all workers
    warmup_ratio: float = 0.1
    schedule: Literal["linear", "cosine", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    # auto: bfloat16 where the hardware computes it (mfray.llm.load.use_bf16), as policy.bf16
    bf16: Literal["auto", "on", "off"] = "auto"
    max_prompt_tokens: int = 1024  # longer prompts are cut from the left
    # LoRA (peft)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ()  # () : every attention and MLP projection
    lora_last_layers: int | None = None  # adapt only the top n layers (a shorter backward)
    # Ray Train
    num_workers: int = 1  # 0: in-process (Ray Train's local mode)
    use_gpu: bool = False
    # steps; each checkpoint is a ray.train.report, of which Ray Train takes one per 2 s poll
    checkpoint_every: int = 50
    log_every: int = 5  # steps between progress lines (metrics.jsonl has every step)
    # mean-field model (information bottleneck)
    estimator: Literal["reinforce", "best-of-k"] = "reinforce"
    k: int = 4
    beta: float = 0.1
    sample_temperature: float = 1.0
    policy_adapter: str | None = None  # the policy whose likelihood is the relevance term

    def __post_init__(self) -> None:
        if self.variant not in TRAIN_VARIANTS:
            raise ConfigError(f"train.variant {self.variant!r} is not one of {TRAIN_VARIANTS}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.lora_r < 1 \
                or self.checkpoint_every < 1 or self.log_every < 1 or self.k < 2 \
                or self.num_workers < 0 or not 0 <= self.warmup_ratio < 1 \
                or self.max_grad_norm <= 0 or self.beta < 0 or self.mix_copies < 0 \
                or self.mix_alpha <= 0 or self.val_examples < 0 or self.tally_orders < 0:
            raise ConfigError("need train.lr > 0, epochs >= 1, batch_size >= 1, lora_r >= 1, "
                              "checkpoint_every >= 1, log_every >= 1, k >= 2, num_workers >= 0, "
                              "0 <= warmup_ratio < 1, max_grad_norm > 0, beta >= 0, "
                              "mix_copies >= 0, mix_alpha > 0, val_examples >= 0, "
                              "tally_orders >= 0")
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
class TrainConfig:
    """Everything one training run needs: how to build its examples and how to train."""

    sim: SimConfig = field(default_factory=SimConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    meanfield: MeanFieldConfig = field(default_factory=MeanFieldConfig)
    train: TrainParams = field(default_factory=TrainParams)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def __post_init__(self) -> None:
        if self.train.tally_orders and self.sim.meanfield_form != "tally":
            raise ConfigError("train.tally_orders reorders the tally's words: it needs "
                              f"sim.meanfield_form=tally, not {self.sim.meanfield_form!r}")
        if self.train.tally_orders and not variant(self.train.variant).shows_numeric:
            raise ConfigError(f"train.tally_orders: the {self.train.variant} prompts show no "
                              "tally (only mf and mf-hybrid do)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
