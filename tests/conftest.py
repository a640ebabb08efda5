"""Shared fixtures: a small synthetic world, and the location of the real data (optional)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mfray.data.schema import write_dataset
from mfray.data.synthetic import WorldParams, generate

# Ray Train's controller polls its workers every 2 s by default, and a run ends at the next
# poll after its last step; the tests' runs last seconds, so they poll more often. The local
# Ray instances the tests start (in this process or in a subprocess) inherit the setting.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RUMOUREVAL_DEV = SHARED_DATA / "rumoureval2017-dev"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

SMALL_WORLD = WorldParams(n_events=4, min_agents=60, max_agents=90, seed=3)


def require_real_data() -> Path:
    """The real RumourEval copy beside the repo, or skip the test."""
    if not RUMOUREVAL_DEV.is_dir():
        pytest.skip(f"real data not present at {RUMOUREVAL_DEV} (../shared/data)")
    return RUMOUREVAL_DEV


@pytest.fixture(scope="session")
def small_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-event synthetic world written as a dataset directory."""
    _, ds = generate(SMALL_WORLD)
    return write_dataset(ds, tmp_path_factory.mktemp("world") / "data")


@pytest.fixture(scope="session")
def tiny_hf():
    """A random-weight 2-layer Llama with a byte-level BPE tokenizer trained here (no download),
    wrapped as an HFModel; long enough positions for real policy prompts."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mfray.llm import HFModel
    from mfray.prompts import template

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([template("policy")] * 5 + ["support deny query comment"] * 5,
                           trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>",
                                               pad_token="<pad>", bos_token="<bos>")
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        initializer_range=0.5, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    return HFModel(model, tok, model_id="tiny-llama", device="cpu", batch_size=8)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_hf, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tiny_hf` saved as a transformers directory (what ``policy.model`` can name)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tiny_hf.model.save_pretrained(path)
    tiny_hf.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def herding_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic world whose agents follow the crowd strongly (herding 3)."""
    _, ds = generate(WorldParams(n_events=2, min_agents=96, max_agents=96, warmup=32,
                                 herding=3.0))
    return write_dataset(ds, tmp_path_factory.mktemp("herding") / "data")
