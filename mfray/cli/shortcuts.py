"""The command-line shortcuts: flags that set one config key each (``--data DIR`` is
``--set sim.data=DIR``). One table serves the parser, the commands and docs/configuration.md."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Shortcut:
    """``flag`` sets ``key``; ``many``: a comma-separated list (``--variants a,b``)."""

    flag: str
    key: str
    help: str
    type: type = str
    many: bool = False

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


SHORTCUTS = {s.flag: s for s in (
    Shortcut("--data", "sim.data", "a converted dataset directory"),
    Shortcut("--model", "policy.model", "the policy model (for train: the base model): a "
             "transformers directory, a .gguf file, 'scripted' or 'scripted-world' (default: "
             "SmolLM2-135M-Instruct); with --url, the name the endpoint serves"),
    Shortcut("--url", "policy.url", "an OpenAI-compatible endpoint serving the policy, e.g. "
             "http://127.0.0.1:8000/v1 (key from $OPENAI_API_KEY)"),
    Shortcut("--policy-adapter", "policy.adapter", "a LoRA adapter from `mfray train policy`"),
    Shortcut("--meanfield-adapter", "meanfield.adapter",
             "a LoRA adapter from `mfray train meanfield` (text mean field)"),
    Shortcut("--shards", "resources.num_shards", "number of AgentShard actors", int),
    Shortcut("--variants", "sim.variants", "comma-separated variants, e.g. state,mf,base-rate",
             many=True),
    Shortcut("--variant", "train.variant", "whose prompts: mf, mf-text, sft (state prompts), "
             "..."),
    Shortcut("--held-out", "train.held_out", "comma-separated events never read "
             "(leave-one-out)", many=True),
    Shortcut("--workers", "resources.num_workers", "Ray Train workers (0: in-process)", int),
)}

#: the shortcuts of each command that builds a config
COMMAND_SHORTCUTS = {
    "simulate": ("--data", "--variants", "--model", "--url", "--policy-adapter",
                 "--meanfield-adapter", "--shards"),
    "plan": ("--data", "--variants", "--model"),
    "validate": ("--data", "--variants", "--model"),
    "probe": ("--data", "--model", "--policy-adapter"),
    "train": ("--data", "--model", "--variant", "--held-out", "--workers"),
}


def add_shortcuts(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of ``command``'s shortcuts."""
    for flag in COMMAND_SHORTCUTS[command]:
        s = SHORTCUTS[flag]
        parser.add_argument(flag, type=s.type, help=f"{s.help} [{s.key}]")


def overrides(args: argparse.Namespace, command: str) -> list[str]:
    """``--set`` and then the shortcuts given, as ``section.key=value`` overrides (a shortcut
    wins over a ``--set`` of the same key)."""
    out = list(getattr(args, "set", None) or [])
    for flag in COMMAND_SHORTCUTS[command]:
        s = SHORTCUTS[flag]
        value = getattr(args, s.dest, None)
        if s.many and value:
            out.append(f"{s.key}=[{value}]")
        elif not s.many and value is not None:
            out.append(f"{s.key}={value}")
    return out
