"""Tests of the config dataclasses: loading TOML/YAML, overrides, type checks, contradictions,
help on every key, and the migration of stored configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mfray.config import (
    VARIANTS,
    EvalConfig,
    PolicyConfig,
    ResourcesConfig,
    RunConfig,
    SimConfig,
    from_dict,
    load_config,
    parse_override,
)
from mfray.config_migrate import migrate, stored_config
from mfray.errors import ConfigError
from mfray.train.config import TrainConfig, TrainResources

TOML = """
[sim]
data = "world"
variants = ["mf", "base-rate"]
seeds = [1, 2]
unit = "thread"
round_size = 8

[eval]
level = 0.9

[resources]
num_shards = 3
"""

YAML = """
sim:
  data: world
  variants: [mf, base-rate]
  seeds: [1, 2]
  unit: thread
  round_size: 8
eval:
  level: 0.9
resources:
  num_shards: 3
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def expected() -> RunConfig:
    return RunConfig(
        sim=SimConfig(data="world", variants=("mf", "base-rate"), seeds=(1, 2), unit="thread",
                      round_size=8),
        eval=EvalConfig(level=0.9),
        resources=ResourcesConfig(num_shards=3),
    )


def test_defaults_are_valid() -> None:
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.sim.round_size == 16 and cfg.sim.warmup == 50
    assert cfg.sim.variants == ("mf", "base-rate", "persistence")  # they run on real data


@pytest.mark.parametrize(("name", "text"), [("c.toml", TOML), ("c.yaml", YAML), ("c.yml", YAML)])
def test_load_toml_and_yaml(tmp_path: Path, name: str, text: str) -> None:
    assert load_config(write(tmp_path, name, text)) == expected()


def test_lists_become_tuples(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "c.toml", TOML))
    assert isinstance(cfg.sim.variants, tuple) and isinstance(cfg.sim.seeds, tuple)
    cfg = from_dict(SimConfig, {"events": ["a", "b"], "train_events": ("c",)})
    assert cfg.events == ("a", "b") and cfg.train_events == ("c",)


def test_overrides_apply_after_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", TOML)
    cfg = load_config(path, ["sim.round_size=4", "sim.seeds=[5, 6, 7]", "eval.source=labels",
                             "resources.address=ray://head:10001", "sim.events=[e1]"])
    assert cfg.sim.round_size == 4
    assert cfg.sim.seeds == (5, 6, 7)
    assert cfg.eval.source == "labels"
    assert cfg.resources.address == "ray://head:10001"
    assert cfg.sim.events == ("e1",)
    assert cfg.sim.data == "world"  # untouched keys keep the file's value


def test_override_without_file_creates_sections() -> None:
    cfg = load_config(None, ["sim.warmup=0", "eval.n_bootstrap=500"])
    assert cfg.sim.warmup == 0 and cfg.eval.n_bootstrap == 500


def test_parse_override() -> None:
    assert parse_override("sim.round_size=8") == (["sim", "round_size"], "8")
    assert parse_override("resources.address=a=b") == (["resources", "address"], "a=b")
    assert parse_override("sim.data=") == (["sim", "data"], "")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("sim.round_size")


def test_override_values_are_read_as_yaml_for_typed_keys() -> None:
    cfg = load_config(None, ["sim.round_size=8", "sim.variants=[base-rate, persistence]",
                             "sim.seeds=[0, 1]", "resources.address=null"])
    assert cfg.sim.round_size == 8 and cfg.sim.seeds == (0, 1)
    assert cfg.sim.variants == ("base-rate", "persistence") and cfg.resources.address is None
    with pytest.raises(ConfigError, match="unreadable value"):
        load_config(None, ["sim.variants=[mf"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(None, ["sim.round_size=eight"])


def test_override_of_a_string_key_keeps_numeric_looking_text() -> None:
    assert load_config(None, ["sim.data=2017"]).sim.data == "2017"


def test_override_into_a_non_section_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "sim: 3\n")
    with pytest.raises(ConfigError, match="sim is not a section"):
        load_config(path, ["sim.round_size=4"])


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"simm": {}}, "simm"),
        ({"sim": {"round_sise": 4}}, "sim.round_sise"),
        ({"eval": {"levels": 0.9}}, "eval.levels"),
    ],
)
def test_unknown_keys_are_named(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key {key}\b") as exc:
        from_dict(RunConfig, data)
    assert "known keys here" in str(exc.value)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key sim.rounds"):
        load_config(write(tmp_path, "c.toml", "[sim]\nrounds = 3\n"))


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"sim": {"round_size": "8"}}, "sim.round_size: expected int"),
        ({"sim": {"round_size": 8.0}}, "sim.round_size: expected int"),
        ({"sim": {"round_size": True}}, "sim.round_size: expected int"),
        ({"sim": {"seeds": [1, "2"]}}, r"sim.seeds\[1\]: expected int"),
        ({"sim": {"seeds": [True]}}, r"sim.seeds\[0\]: expected int"),
        ({"sim": {"variants": "mf"}}, "sim.variants: expected a list"),
        ({"sim": {"variants": 3}}, "sim.variants: expected a list"),
        ({"sim": {"data": 3}}, "sim.data: expected str"),
        ({"eval": {"level": "high"}}, "eval.level: expected float"),
        ({"eval": {"level": True}}, "eval.level: expected float"),
        ({"resources": {"address": 5}}, "resources.address: expected str"),
        ({"sim": 3}, "sim.: expected a table"),
    ],
)
def test_wrong_types_are_rejected(data: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        from_dict(RunConfig, data)


def test_int_is_accepted_for_float_and_none_for_optional() -> None:
    cfg = from_dict(RunConfig, {"eval": {"level": 0.5}, "resources": {"address": None}})
    assert cfg.eval.level == 0.5 and cfg.resources.address is None
    ev = from_dict(EvalConfig, {"n_bootstrap": 100, "level": 0.99})
    assert isinstance(ev.level, float)
    # ints are widened (a config file may write `level = 0` style whole numbers)
    with pytest.raises(ConfigError, match="eval.level must be in"):
        from_dict(RunConfig, {"eval": {"level": 1}})


@pytest.mark.parametrize(("data", "where"), [
    ({"sim": {"unit": "post"}}, "sim.unit: 'post' is not one of"),
    ({"eval": {"source": "logits"}}, "eval.source: 'logits' is not one of"),
])
def test_literal_values_are_checked(data: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        from_dict(RunConfig, data)


def test_exponent_floats_without_a_dot(tmp_path: Path) -> None:
    # YAML 1.1 reads 2e-3 as text; for a float setting it is the number a researcher meant
    assert load_config(None, ["eval.level=95e-2"]).eval.level == 0.95
    (tmp_path / "c.yaml").write_text("eval:\n  level: 9e-1\n")
    assert load_config(tmp_path / "c.yaml").eval.level == 0.9
    with pytest.raises(ConfigError, match="expected float"):
        load_config(None, ["eval.level=e-3"])


def test_on_off_options_are_not_yaml_booleans(tmp_path: Path) -> None:
    # YAML 1.1 reads `on`/`off` as booleans; for an on/off/auto option they mean the option
    assert load_config(None, ["policy.bf16=on"]).policy.bf16 == "on"
    (tmp_path / "c.yaml").write_text("policy:\n  bf16: off\n")
    assert load_config(tmp_path / "c.yaml").policy.bf16 == "off"
    with pytest.raises(ConfigError, match="policy.bf16: 'yes please' is not one of"):
        load_config(None, ["policy.bf16=yes please"])
    with pytest.raises(ConfigError, match="sim.unit: True is not one of"):
        load_config(None, ["sim.unit=on"])  # not an on/off option: still an error


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variants": ("mf", "gpt")}, "unknown variant 'gpt'"),
        ({"variants": ()}, "sim.variants is empty"),
        ({"variants": ("mf", "mf")}, "lists a variant twice"),
        ({"seeds": (1, 1)}, "distinct integers"),
        ({"seeds": ()}, "non-empty"),
        ({"events": ("a", "b"), "train_events": ("b", "c")}, r"overlap on \['b'\]"),
        ({"round_size": 0}, "sim.round_size must be >= 1"),
        ({"warmup": -1}, "sim.warmup must be >= 0"),
    ],
)
def test_sim_contradictions(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SimConfig(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (EvalConfig, {"level": 0.4}, "eval.level"),
        (EvalConfig, {"level": 1.0}, "eval.level"),
        (EvalConfig, {"n_bootstrap": 99}, "eval.n_bootstrap"),
        (ResourcesConfig, {"num_shards": 0}, "resources.num_shards"),
    ],
)
def test_eval_and_resources_bounds(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


def test_every_variant_is_accepted() -> None:
    assert SimConfig(variants=VARIANTS).variants == VARIANTS


def test_contradiction_from_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "sim:\n  events: [e1]\n  train_events: [e1]\n")
    with pytest.raises(ConfigError, match="overlap"):
        load_config(path)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "bad.toml", "[sim\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "bad.yaml", "sim: [a\n"))
    with pytest.raises(ConfigError, match="top level must be a table"):
        load_config(write(tmp_path, "list.yaml", "- a\n- b\n"))
    assert load_config(write(tmp_path, "empty.yaml", "")) == RunConfig()


def test_to_dict_round_trip() -> None:
    cfg = expected()
    assert from_dict(RunConfig, cfg.to_dict()) == cfg
    # through JSON (tuples become lists), as the resolved config is stored with a run
    stored = json.dumps(cfg.to_dict())
    again = from_dict(RunConfig, json.loads(stored))
    assert again == cfg
    assert isinstance(again.sim.seeds, tuple)
    assert json.loads(stored)["sim"]["variants"] == ["mf", "base-rate"]


def test_configs_are_frozen() -> None:
    cfg = RunConfig()
    with pytest.raises(AttributeError):
        cfg.sim.round_size = 3  # type: ignore[misc]


# ------------------------------------------------------------------ stored configs, help


def _every_field(cls: type, where: str = "") -> list[tuple[str, Any]]:
    """(dotted name, field) of every field of a config tree, sections included."""
    import dataclasses
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.append((f"{where}{f.name}", f))
        if dataclasses.is_dataclass(hints[f.name]):
            out += _every_field(hints[f.name], f"{where}{f.name}.")
    return out


@pytest.mark.parametrize("cls", [RunConfig, TrainConfig], ids=["RunConfig", "TrainConfig"])
def test_every_config_field_has_help(cls: type) -> None:
    fields = _every_field(cls)
    assert len(fields) > 20
    missing = [name for name, f in fields if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"config fields without help: {missing}"


OLD_RUN = {"sim": {"variants": ["state"], "seeds": [0]},
           "policy": {"model": "scripted", "device": "cpu", "num_threads": 2, "batch_size": 8,
                      "max_batch_tokens": 4096, "chunk": 64, "gpu_memory_utilization": 0.5,
                      "concurrency": 4},
           "resources": {"num_shards": 2}}


def test_an_old_stored_run_config_is_migrated() -> None:
    cfg = stored_config(RunConfig, OLD_RUN, "RUN/config.json")
    assert cfg == RunConfig(
        sim=SimConfig(variants=("state",)), policy=PolicyConfig(model="scripted"),
        resources=ResourcesConfig(num_shards=2, device="cpu", num_threads=2, batch_size=8,
                                  max_batch_tokens=4096, chunk=64, gpu_memory_utilization=0.5,
                                  concurrency=4))
    assert migrate(cfg.to_dict()) == cfg.to_dict()  # a current config is left as it is
    assert OLD_RUN["policy"]["device"] == "cpu"  # and the stored dict is not changed


def test_an_old_stored_train_config_is_migrated() -> None:
    old = {"train": {"variant": "sft", "num_workers": 0, "use_gpu": False},
           "policy": {"batch_size": 4}}
    cfg = stored_config(TrainConfig, old, "OUT/train_config.json")
    assert cfg.resources == TrainResources(num_workers=0, use_gpu=False, batch_size=4)
    assert cfg.train.variant == "sft"


@pytest.mark.parametrize("data", [
    {"sim": {"unknown_key": 1}},
    {"policy": {"chunk": 8}, "resources": {"chunk": 16}},
])
def test_a_stored_config_that_cannot_be_migrated_says_how(data: dict) -> None:
    with pytest.raises(ConfigError, match="RUN/config.json: a config this mfray cannot read") \
            as exc:
        stored_config(RunConfig, data, "RUN/config.json")
    assert "To migrate it, edit it into this version's keys (`mfray config`" in str(exc.value)


def test_a_moved_key_in_a_config_file_names_its_new_place() -> None:
    with pytest.raises(ConfigError, match=r"unknown key policy.device \(policy.device is now "
                       r"resources.device\)"):
        load_config(None, ["policy.device=cpu"])
    assert load_config(None, ["resources.device=cpu"]).resources.device == "cpu"


def test_resources_bounds() -> None:
    for bad in ({"chunk": 0}, {"batch_size": 0}, {"max_batch_tokens": 0}, {"concurrency": 0}):
        with pytest.raises(ConfigError, match="must be >= 1"):
            ResourcesConfig(**bad)
    with pytest.raises(ConfigError, match="resources.num_workers"):
        TrainResources(num_workers=-1)
