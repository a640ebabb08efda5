"""The backend factory: the model a :class:`~mfray.config.PolicyConfig` names, checked in the
driver (:func:`check_model`) and built where it runs (:func:`build_model`).

``policy.model`` names a scripted model (:data:`SCRIPTED`), a prompt classifier (a ``mfray train
classifier`` run), a distilled policy (a ``mfray distill`` directory), a transformers directory or a ``.gguf`` file (None: SmolLM2); ``policy.url``
serves it over an OpenAI-compatible endpoint and ``policy.engine`` picks transformers or vLLM.
"""

from __future__ import annotations

import os
from pathlib import Path

from mfray.config import PolicyConfig, ResourcesConfig
from mfray.llm.base import LanguageModel, ModelError, ScriptedModel
from mfray.llm.classifier import classifier_path, load_classifier
from mfray.llm.distill import DISTILLED_FILE, load_distilled
from mfray.llm.load import check_bf16, default_gguf, load_model

#: the model names that need no weights: a hashed model, and the synthetic world's own rule
SCRIPTED = ("scripted", "scripted-world")


def check_model(cfg: PolicyConfig, resources: ResourcesConfig | None = None) -> None:
    """Fail early, in the driver, with a clear message when the named model cannot exist; say
    on stderr when ``policy.bf16 = on`` would emulate bfloat16 on this machine's CPU."""
    if cfg.adapter and not (Path(cfg.adapter).expanduser() / "adapter_config.json").is_file():
        raise ModelError(f"no LoRA adapter at {cfg.adapter} (adapter_config.json missing)")
    if (path := _fitted(cfg.model)) is not None and (cfg.mode != "choice" or cfg.adapter):
        raise ModelError(f"{path} is a fitted policy ({path.stem}): it takes "
                         "policy.mode=choice and no adapter")
    if cfg.model in SCRIPTED or cfg.url or path is not None:
        return
    path = default_gguf() if cfg.model is None else Path(cfg.model).expanduser()
    if not ((path.is_file() and path.suffix == ".gguf") or (path / "config.json").is_file()):
        raise ModelError(f"no model at {path}: give a transformers directory (with "
                         "config.json), a .gguf file, a classifier (`mfray train classifier`), "
                         "'scripted' or 'scripted-world'")
    if cfg.engine == "transformers":  # vLLM chooses its own dtype
        check_bf16(cfg.bf16, (resources or ResourcesConfig()).device, "policy.bf16")


def _fitted(model: str | None) -> Path | None:
    """The prompt classifier or distilled policy ``policy.model`` names, if it names one."""
    return classifier_path(model) or classifier_path(model, DISTILLED_FILE)


def build_model(cfg: PolicyConfig, data_dir: str | None = None,
                more_adapters: bool = False, resources: ResourcesConfig | None = None
                ) -> LanguageModel:
    """The policy model named by ``policy.model`` (served at ``policy.url`` when set), on the
    device, threads and batches of ``resources``. ``more_adapters``: an engine that switches
    adapters (vLLM) must allow them from the start."""
    res = resources or ResourcesConfig()
    if cfg.url:
        from mfray.llm.openai import OpenAICompatibleModel

        return OpenAICompatibleModel(cfg.url, str(cfg.model), batch_size=res.batch_size,
                                     api_key_env=cfg.api_key_env, concurrency=res.concurrency,
                                     max_retries=cfg.max_retries, timeout_s=cfg.timeout_s,
                                     requests_per_s=cfg.requests_per_s)
    if cfg.model == "scripted":
        return ScriptedModel()
    if (path := _fitted(cfg.model)) is not None:
        return load_distilled(path) if path.name == DISTILLED_FILE else load_classifier(path)
    if cfg.model == "scripted-world":
        from mfray.baselines import load_world, world_rule_model
        from mfray.data.schema import read_dataset

        return world_rule_model(load_world(cfg.model, read_dataset(data_dir or "")))
    if cfg.engine == "vllm":
        from mfray.llm.vllm import VLLMModel

        return VLLMModel(cfg.model, adapter=cfg.adapter, lora=more_adapters,
                         gpu_memory_utilization=res.gpu_memory_utilization)
    import torch

    # Ray starts actors with OMP_NUM_THREADS=1; a CPU model wants every core of its node
    torch.set_num_threads(res.num_threads or os.cpu_count() or 1)
    return load_model(cfg.model, device=res.device, batch_size=res.batch_size,
                      max_batch_tokens=res.max_batch_tokens, adapter=cfg.adapter,
                      bf16=cfg.bf16)
