"""Stored configs of older mfray versions: :func:`stored_config` reads one back (a run's
``config.json``, a training's ``train_config.json``), moving older keys to their place
(:func:`migrate`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from mfray.config import MOVED_TO_RESOURCES, from_dict
from mfray.errors import ConfigError

T = TypeVar("T")


def migrate(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config of an older mfray in this version's keys: the hardware and parallelism
    keys of ``policy`` and ``train`` (:data:`MOVED_TO_RESOURCES`) move to ``resources``, and a
    removed experiment switch (``train.tally_orders``) is dropped where it was off. A current
    config comes back unchanged."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table of sections, got {type(data).__name__}")
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for name, keys in MOVED_TO_RESOURCES.items():
        old = out.get(name)
        if not isinstance(old, dict):
            continue
        for key in (k for k in keys if k in old):
            value = old.pop(key)
            resources = out.setdefault("resources", {})
            if not isinstance(resources, dict):
                raise ConfigError("resources: expected a table of keys")
            if resources.setdefault(key, value) != value:
                raise ConfigError(f"{name}.{key} = {value!r} and resources.{key} = "
                                  f"{resources[key]!r} contradict each other")
    train = out.get("train")
    if isinstance(train, dict) and train.get("tally_orders", 0) in (0, None):
        train.pop("tally_orders", None)  # removed in issue 38: a run that used it stays refused
    return out


def stored_config(cls: type[T], data: Mapping[str, Any], source: str | Path) -> T:
    """The config of class ``cls`` stored at ``source`` (a run's config.json, a training's
    train_config.json), migrated from an older mfray's keys; one that cannot be read is
    refused with a message that says how to migrate it."""
    try:
        return from_dict(cls, migrate(data))
    except ConfigError as exc:
        raise ConfigError(f"{source}: a config this mfray cannot read ({exc}). To migrate it, "
                          "edit it into this version's keys (`mfray config` lists them, "
                          "docs/configuration.md too), or resume with the mfray version that "
                          "wrote it") from None
