"""The transformers backend on a tiny random model (mfray/llm/hf.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mfray.llm import HFModel, LanguageModel, ModelError
from mfray.llm import hf as hf_backend

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
    return tiny_llama()


def tiny_llama() -> tuple:
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


def test_batches_respect_size_and_token_budget():
    lengths = [5, 40, 12, 40, 3, 7, 100]
    got = list(hf_backend.batches(lengths, batch_size=3, max_batch_tokens=90))
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    assert got[0] == [6]  # alone over budget, still run
    for b in got:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 90)


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
        got = hf_backend.continuation_logprobs(model, seqs, n_cont, pad_id=0, side=side)
    for s, n, g in zip(seqs, n_cont, got, strict=True):
        assert g == pytest.approx(_token_logprobs(model, s)[-n:].sum(), abs=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_continuation_logprobs_do_not_depend_on_the_padded_width(tiny, side):
    model, tok = tiny
    seqs = [tok(p)["input_ids"] for p in PROMPTS]
    with torch.inference_mode():
        exact = hf_backend.continuation_logprobs(model, seqs, [2, 1, 3, 2], pad_id=0, side=side)
        wide = hf_backend.continuation_logprobs(model, seqs, [2, 1, 3, 2], pad_id=0, side=side,
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


def test_the_inference_actor_tokenises_each_prompt_once(tiny, monkeypatch):
    from mfray.config import PolicyConfig
    from mfray.engine.inference import InferenceServer
    from mfray.engine.shard import Requests

    calls: list[list[str]] = []
    real = hf_backend.encode_prompts
    monkeypatch.setattr(hf_backend, "encode_prompts",
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


def test_text_mode_counts_each_posts_prompt_tokens(tiny):
    """Text mode records the tokens of the prompt each post was written from (it recorded
    none, so `mfray bench model --mode text` showed 0 prompt tokens/s)."""
    from mfray.config import PolicyConfig
    from mfray.engine.inference import InferenceServer
    from mfray.engine.shard import Requests

    model = HFModel(*tiny, model_id="tiny", device="cpu", batch_size=3)
    server = InferenceServer(PolicyConfig(mode="text", max_new_tokens=4),
                             {"stance": ("yes", "no")}, model=model)
    prompts = [PROMPTS[0], PROMPTS[1]]
    scored = server.generate_round(Requests([(0, i, 0) for i in range(2)], prompts, [1, 2],
                                            ["", ""]))[0]
    formatted = [server.format(p) for p in prompts]
    assert scored.tokens_in == [len(ids) for ids in hf_backend.encode_prompts(tiny[1],
                                                                               formatted)]


def test_prompts_encoded_in_a_batch_as_one_by_one(tiny):
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tiny[1])  # one that adds a BOS, as SmolLM2's and Llama's do
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 2)])
    prompts = ["<bos>the cat", "the cat", "<bos>a", "a", "Hello world"]
    ids = hf_backend.encode_prompts(tok, prompts)
    assert ids == [tok(p, add_special_tokens=not p.startswith("<bos>"))["input_ids"]
                   for p in prompts]
    assert [x.count(2) for x in ids] == [1] * len(prompts)  # one BOS each, never two
    assert ids[0] == ids[1] and ids[2] == ids[3]
