"""``mfray config`` and docs/configuration.md, generated from the config dataclasses, and the
shortcut table that maps flags to keys."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mfray.cli import build_parser, main
from mfray.cli.keys import describe, markdown
from mfray.cli.shortcuts import COMMAND_SHORTCUTS, SHORTCUTS
from mfray.config import RunConfig
from mfray.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _leaf_keys(cls: type, where: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaf_keys(hints[f.name], f"{where}{f.name}.")
        else:
            out.append(f"{where}{f.name}")
    return out


def test_docs_configuration_md_is_what_the_generator_writes() -> None:
    """Regenerate with `make docs` (mfray config --markdown > docs/configuration.md)."""
    assert (REPO / "docs" / "configuration.md").read_text(encoding="utf-8") == markdown(), \
        "docs/configuration.md is stale: run `make docs`"


def test_mfray_config_lists_every_key_with_its_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    for key in {*_leaf_keys(RunConfig), *_leaf_keys(TrainConfig)}:
        assert f"  {key}: " in text, key
    assert "  sim.round_size: integer = 16\n      B: agents per round" in text
    assert "  resources.num_workers: integer = 1" in text  # what training adds
    doc = markdown()
    for key in {*_leaf_keys(RunConfig), *_leaf_keys(TrainConfig)}:
        assert f"| `{key}` |" in doc, key


def test_mfray_config_section(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "eval"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("[eval] ") and "eval.n_bootstrap: integer = 2000" in text
    assert "sim." not in text
    assert main(["config", "nope"]) == 2
    assert "no config section 'nope'; the sections: eval, meanfield" in capsys.readouterr().err
    assert describe("train").startswith("[train] (mfray train) ")


def test_every_shortcut_names_a_key_its_commands_read() -> None:
    run, train = set(_leaf_keys(RunConfig)), set(_leaf_keys(TrainConfig))
    for command, flags in COMMAND_SHORTCUTS.items():
        keys = train if command == "train" else run
        for flag in flags:
            assert SHORTCUTS[flag].key in keys, (command, flag)
    parser = build_parser()
    args = parser.parse_args(["train", "policy", "--out", "o", "--workers", "0", "--held-out",
                              "a,b", "--variant", "sft"])
    from mfray.cli.shortcuts import overrides

    assert overrides(args, "train") == ["train.variant=sft", "train.held_out=[a,b]",
                                        "resources.num_workers=0"]


def test_help_says_what_mfray_is_and_lists_the_commands() -> None:
    done = subprocess.run([sys.executable, "-m", "mfray.cli", "--help"], capture_output=True,
                          text=True, timeout=60, check=False, env={"COLUMNS": "100",
                                                                  "PATH": "/usr/bin:/bin",
                                                                  "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "\nmfray simulates how a population of social-media users reacts" in done.stdout
    commands = done.stdout.split("commands:\n", 1)[1]
    for name in ("data", "simulate", "evaluate", "compare", "train", "config", "demo"):
        assert f"\n    {name} " in commands or commands.startswith(f"    {name} "), name
