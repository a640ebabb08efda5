"""``mfray config [SECTION]``: every config key with its type, default and help, read from
the config dataclasses; ``--markdown`` writes the same as docs/configuration.md."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from mfray.cli.shortcuts import COMMAND_SHORTCUTS, SHORTCUTS
from mfray.errors import MfrayError


@dataclass(frozen=True)
class Key:
    """One config key as a reader sees it."""

    name: str
    type: str
    default: str
    help: str


@dataclass(frozen=True)
class Section:
    """A section of a config file: its help and keys; ``extends`` names the section whose keys
    it adds to (``resources`` of a training adds Ray Train's workers)."""

    name: str
    help: str
    keys: tuple[Key, ...]
    extends: str = ""


def type_name(tp: Any) -> str:
    """A field's type in a config file's words: text, integer, one of ..., list of ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if origin is tuple:
        return f"list of {type_name(args[0])}"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {str: "text", int: "integer", float: "number", bool: "true | false"}.get(tp, str(tp))


def show(value: Any) -> str:
    """A default as a config file writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def _keys(cls: type, section: str, skip: frozenset[str] = frozenset()) -> tuple[Key, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(Key(f"{section}.{f.name}", type_name(hints[f.name]), show(f.default),
                     f.metadata.get("help", ""))
                 for f in dataclasses.fields(cls) if f.name not in skip)


def sections(cls: type, base: type | None = None) -> list[Section]:
    """The sections of the config class ``cls`` (:class:`~mfray.config.RunConfig` or
    ``TrainConfig``); with ``base``, only what ``cls`` adds to ``base``'s sections."""
    hints = typing.get_type_hints(cls)
    known = typing.get_type_hints(base) if base is not None else {}
    out = []
    for f in dataclasses.fields(cls):
        tp, help_ = hints[f.name], f.metadata.get("help", "")
        parent = known.get(f.name)
        if parent is tp:
            continue
        if parent is not None and issubclass(tp, parent):
            own = frozenset(g.name for g in dataclasses.fields(parent))
            out.append(Section(f.name, help_, _keys(tp, f.name, own), extends=f.name))
        else:
            out.append(Section(f.name, help_, _keys(tp, f.name)))
    return out


def _trees() -> list[tuple[str, str, list[Section]]]:
    """(command, what it reads, sections) of the simulator's configs and of what a training
    config adds to them."""
    from mfray.config import RunConfig
    from mfray.train.config import TrainConfig

    return [("mfray simulate", ("`mfray simulate`, `plan`, `probe` and a sweep's `base` read "
             "these sections."), sections(RunConfig)),
            ("mfray train", ("`mfray train` reads the sections sim, policy and meanfield above "
             "(its examples are built as the simulator renders its prompts), and these."),
             sections(TrainConfig, RunConfig))]


def describe(only: str | None = None, width: int = 92) -> str:
    """Every key (or those of section ``only``) as text: name, type, default, wrapped help."""
    lines: list[str] = []
    for command, _, secs in _trees():
        for sec in secs:
            if only is not None and sec.name != only:
                continue
            who = f"({command} adds) " if sec.extends else \
                "(mfray train) " if command == "mfray train" else ""
            lines += ["", f"[{sec.name}] {who}{sec.help}"]
            for key in sec.keys:
                lines.append(f"  {key.name}: {key.type} = {key.default}")
                lines += textwrap.wrap(key.help, width, initial_indent=" " * 6,
                                       subsequent_indent=" " * 6)
    if not lines:
        names = sorted({s.name for _, _, secs in _trees() for s in secs})
        raise MfrayError(f"no config section {only!r}; the sections: {', '.join(names)}")
    return "\n".join(lines).strip("\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/configuration.md: how keys are given, the shortcuts, then one table per section."""
    out = [
        "# Configuration",
        "",
        ("<!-- generated by `mfray config --markdown` (make docs) from the config dataclasses; "
        "do not edit -->"),
        "",
        ("A config file (TOML or YAML) holds sections of keys; `--config FILE` reads it, "
        "`--set section.key=value` (or `--section.key=value`) overrides one key, and an unknown "
        "key or a value of the wrong type is an error. `mfray config [SECTION]` prints the "
        "same list. The resolved config is stored with every run (`config.json`) and every "
        "training (`train_config.json`). The `resources` section says where a run executes; "
        "every other section says what it computes."),
        "",
        "## Command-line shortcuts",
        "",
        "| flag | key | commands |",
        "|---|---|---|",
    ]
    for flag, s in SHORTCUTS.items():
        commands = ", ".join(c for c, flags in COMMAND_SHORTCUTS.items() if flag in flags)
        out.append(f"| `{flag}` | `{s.key}` | {commands} |")
    for command, intro, secs in _trees():
        out += ["", f"## {command}", "", intro]
        for sec in secs:
            added = " (added to the keys above)" if sec.extends else ""
            out += ["", f"### `{sec.name}`{added}", "", _cell(sec.help) + ".", "",
                    "| key | type | default | help |", "|---|---|---|---|"]
            out += [f"| `{k.name}` | {_cell(k.type)} | `{_cell(k.default)}` | {_cell(k.help)} |"
                    for k in sec.keys]
    return "\n".join(out) + "\n"


def cmd_config(args: argparse.Namespace) -> None:
    print(markdown() if args.markdown else describe(args.section), end="" if args.markdown
          else "\n")
