"""The vLLM backend's glue (mfray/llm/vllm.py).

vLLM needs a CUDA GPU. Here a stand-in engine with vLLM's interface computes its answers from
the tiny transformers model, so the backend's scores can be compared with the transformers
backend's; the last test runs the real engine and skips where vLLM or a GPU is missing.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mfray.config import PolicyConfig, ResourcesConfig
from mfray.engine.inference import InferenceServer
from mfray.errors import ConfigError
from mfray.llm import ModelError

torch = pytest.importorskip("torch")

OPTS = ("support", "deny", "query", "comment")
PROMPTS = ["The reply supports the claim. Stance:", "Nobody believes this. Stance:",
           "Is this true? Stance:"]


@dataclass
class Logprob:
    logprob: float


@dataclass
class Completion:
    text: str
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass
class Output:
    outputs: list[Completion]
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


class SamplingParams:
    def __init__(self, **kw: Any) -> None:
        self.prompt_logprobs = kw.pop("prompt_logprobs", None)
        self.allowed_token_ids = kw.pop("allowed_token_ids", None)
        self.kw = kw


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class FakeLLM:
    """vLLM's ``LLM`` as far as the backend uses it, answering from a transformers model."""

    hf: Any
    init: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[int, Any]] = field(default_factory=list)
    resets: int = 0
    drop_logprobs_of: set[int] = field(default_factory=set)

    def get_tokenizer(self) -> Any:
        return self.hf.tokenizer

    def reset_prefix_cache(self) -> None:
        self.resets += 1

    def generate(self, prompts: list[dict], params: Any, use_tqdm: bool,
                 lora_request: Any) -> list[Output]:
        self.calls.append((len(prompts), lora_request))
        out = []
        for k, p in enumerate(prompts):
            sp = params[k] if isinstance(params, list) else params
            ids = p["prompt_token_ids"]
            with torch.no_grad():
                logits = self.hf.model(torch.tensor([ids])).logits[0].float()
            if k in self.drop_logprobs_of:
                out.append(Output([Completion("", None)]))
            elif sp.prompt_logprobs is not None:
                lp = torch.log_softmax(logits, -1)
                steps = [None] + [{ids[j]: Logprob(lp[j - 1, ids[j]].item())}
                                  for j in range(1, len(ids))]
                out.append(Output([Completion("")], steps))
            elif sp.allowed_token_ids:  # processed log-probs: renormalised over the allowed
                allowed = sp.allowed_token_ids
                lp = torch.log_softmax(logits[-1, allowed], -1)
                step = {t: Logprob(v) for t, v in zip(allowed, lp.tolist(), strict=True)}
                out.append(Output([Completion("", [step])]))
            else:
                out.append(Output([Completion(f"seed {sp.kw['seed']} top_k {sp.kw['top_k']}")]))
        return out


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tiny_hf) -> dict[str, Any]:
    made: dict[str, Any] = {}

    def llm(**kw: Any) -> FakeLLM:
        made["llm"] = FakeLLM(tiny_hf, init=kw)
        return made["llm"]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.TokensPrompt = llm, SamplingParams, dict
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    return made


def test_engine_settings_and_scores_equal_the_transformers_backend(fake_vllm, tiny_hf,
                                                                   tiny_model_dir) -> None:
    from mfray.llm.vllm import VLLMModel

    m = VLLMModel(tiny_model_dir)
    init = fake_vllm["llm"].init
    assert init["enable_prefix_caching"] is True and init["trust_remote_code"] is False
    assert init["logprobs_mode"] == "processed_logprobs" and init["enable_lora"] is False
    assert init["model"] == str(tiny_model_dir)
    # distinct first tokens: one request per prompt, restricted to the options
    np.testing.assert_allclose(m.score(PROMPTS, OPTS), tiny_hf.score(PROMPTS, OPTS),
                               atol=1e-5)
    assert fake_vllm["llm"].calls[-1][0] == len(PROMPTS)
    # a shared first token: the full rule from prompt log-probabilities
    shared = ("support yes", "support no", "deny")
    assert len({tiny_hf.tokenizer(o, add_special_tokens=False)["input_ids"][0]
                for o in shared}) < len(shared)
    np.testing.assert_allclose(m.score(PROMPTS, shared), tiny_hf.score(PROMPTS, shared),
                               atol=1e-5)
    assert fake_vllm["llm"].calls[-1][0] == len(PROMPTS) * len(shared)
    assert m.score([], OPTS).shape == (0, 4)


def test_missing_logprobs_name_the_prompts(fake_vllm, tiny_model_dir) -> None:
    from mfray.llm.vllm import VLLMModel

    m = VLLMModel(tiny_model_dir)
    fake_vllm["llm"].drop_logprobs_of = {1}
    with pytest.raises(ModelError) as e:
        m.score(PROMPTS, OPTS)
    assert e.value.indices == (1,)


def test_generation_parameters_seeds_and_adapters(fake_vllm, tiny_model_dir,
                                                  tmp_path: Path) -> None:
    from mfray.llm.vllm import VLLMModel

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    m = VLLMModel(tiny_model_dir, adapter=tmp_path / "a")
    llm = fake_vllm["llm"]
    assert llm.init["enable_lora"] is True and llm.resets == 1
    texts = m.generate(PROMPTS[:2], max_new_tokens=5, temperature=0.8, top_p=0.85, top_k=0,
                       seeds=[7, 9])
    assert texts == ["seed 7 top_k -1", "seed 9 top_k -1"]
    assert llm.calls[-1][1].lora_path == str((tmp_path / "a").resolve())
    m.set_adapter(tmp_path / "a")
    assert llm.resets == 1  # same adapter: the prefix cache stays
    m.set_adapter(tmp_path / "b")
    m.set_adapter(None)
    assert llm.resets == 3 and m._lora is None
    with pytest.raises(ValueError, match="seeds are required"):
        m.generate(PROMPTS, temperature=0.8)


def test_inference_actor_switches_adapters_for_the_summaries(fake_vllm, tiny_model_dir,
                                                             tmp_path: Path) -> None:
    """The text mean field's adapter is used for summaries, the policy's for decisions, on
    one engine (no second copy of the weights)."""
    for d in ("policy", "mf"):
        (tmp_path / d).mkdir()
    cfg = PolicyConfig(model=str(tiny_model_dir), engine="vllm",
                       adapter=str(tmp_path / "policy"))
    server = InferenceServer(cfg, {"stance": OPTS}, meanfield_adapter=str(tmp_path / "mf"))
    llm = fake_vllm["llm"]
    assert server._summarizer is server.model and llm.init["enable_lora"] is True
    server.summarize([(0, "Summarise the reactions.")], max_new_tokens=4)
    assert llm.calls[-1][1].lora_path == str((tmp_path / "mf").resolve())
    assert server.model._lora.lora_path == str((tmp_path / "policy").resolve())  # restored


def test_engine_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="local model"):
        PolicyConfig(engine="vllm", url="http://127.0.0.1:8000/v1", model="m")
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        ResourcesConfig(gpu_memory_utilization=1.5)


def test_without_vllm_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails
    from mfray.llm.vllm import VLLMModel

    with pytest.raises(ModelError, match=r"pip install 'mfray\[vllm\]'"):
        VLLMModel("whatever")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
                    reason="the real vLLM engine needs vLLM and a CUDA GPU")
def test_real_engine_scores_match_transformers(tiny_hf, tiny_model_dir) -> None:
    from mfray.llm.vllm import VLLMModel

    m = VLLMModel(tiny_model_dir, gpu_memory_utilization=0.3)
    np.testing.assert_allclose(m.score(PROMPTS, OPTS), tiny_hf.score(PROMPTS, OPTS),
                               atol=2e-3)
    texts = m.generate(PROMPTS, max_new_tokens=8, temperature=0.8, top_p=0.85, top_k=50,
                       seeds=[1, 2, 3])
    assert texts == m.generate(PROMPTS, max_new_tokens=8, temperature=0.8, top_p=0.85,
                               top_k=50, seeds=[1, 2, 3])  # seeded
    m.close()
