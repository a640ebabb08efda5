"""Training losses: continuation log-probs equal a by-hand loop on the unpadded sequence for both
padding sides, the choice loss is the cross-entropy over option log-likelihoods, the text NLL
counts target tokens only, LoRA trains only its adapters, and the choice loss can be overfit."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mfray.train.losses import (
    LORA_PROJECTIONS,
    add_lora,
    choice_loss,
    pad_batch,
    sequence_logprobs,
    text_nll,
    token_logprobs,
)

VOCAB, PAD = 64, 0
SIDES = ("left", "right")
# prompt + continuation, of different lengths so that the batch is padded
SEQS = [[5, 9, 2, 33, 17, 8, 40], [12, 3, 7], [60, 1, 22, 45, 9, 9, 30, 11, 4, 19]]
TARGETS = [3, 1, 4]


def _tiny_model(init: float = 0.02):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=128,
                                      initializer_range=init)
    return transformers.LlamaForCausalLM(config).float().eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: intra-op threads only contend (50x slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


def _by_hand(model, seq: list[int], n_target: int) -> list[float]:
    """Log-prob of each of the last ``n_target`` tokens, from the unpadded sequence alone."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0].double()
    return [torch.log_softmax(logits[j - 1], dim=-1)[seq[j]].item()
            for j in range(len(seq) - n_target, len(seq))]


def test_pad_batch_layout():
    seqs, targets = [[7, 8, 9], [4, 5, 6, 7, 8]], [1, 2]
    ids, mask, tmask, pos = pad_batch(seqs, targets, PAD, "left")
    assert ids.tolist() == [[0, 0, 7, 8, 9], [4, 5, 6, 7, 8]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert tmask.tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 1, 1]]
    assert pos[mask.bool()].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    ids, mask, tmask, pos = pad_batch(seqs, targets, PAD, "right")
    assert ids.tolist() == [[7, 8, 9, 0, 0], [4, 5, 6, 7, 8]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert tmask.tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 1, 1]]
    assert pos[mask.bool()].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="first token"):
        pad_batch([[1, 2]], [2], PAD, "right")


def test_pad_batch_rounds_the_width_up_to_a_multiple():
    seqs, targets = [[7, 8, 9], [4, 5, 6, 7, 8]], [1, 2]
    ids, mask, tmask, pos = pad_batch(seqs, targets, PAD, "right", multiple=4)
    assert ids.tolist() == [[7, 8, 9, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 0, 0, 0]]
    assert mask.sum(-1).tolist() == [3, 5] and tmask.tolist()[1] == [0, 0, 0, 1, 1, 0, 0, 0]
    ids, mask, tmask, pos = pad_batch(seqs, targets, PAD, "left", multiple=4)
    assert ids.tolist() == [[0, 0, 0, 0, 0, 7, 8, 9], [0, 0, 0, 4, 5, 6, 7, 8]]
    assert pos[mask.bool()].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert pad_batch(seqs, targets, PAD, "right", multiple=5)[0].shape == (2, 5)  # no extra
    with pytest.raises(ValueError, match="multiple"):
        pad_batch(seqs, targets, PAD, "right", multiple=0)


@pytest.mark.parametrize("side", SIDES)
def test_a_wider_padding_changes_no_value_nor_gradient(side):
    """The GPU rounds padded widths up to 64 (fewer shapes for the attention kernels): the
    log-probs, the choice loss, the text NLL and the LoRA gradients stay the same."""
    lora = add_lora(_tiny_model(init=0.5), r=4)
    lora.train()
    prompts = [[3, 14, 15, 9, 2, 6], [27, 18], [31, 41, 59, 26, 53]]
    labels = [2, 0, 1]
    for options in ([[10], [20], [30]], [[10], [20, 21], [30, 31, 32]]):
        grads = []
        for multiple in (1, 64):
            lora.zero_grad()
            loss, logp = choice_loss(lora, prompts, options, labels, PAD, side, multiple=multiple)
            loss.backward()
            grads.append((loss.detach(), logp.detach(), [p.grad.clone() for p in
                                                         lora.parameters() if p.requires_grad]))
        (l1, p1, g1), (l64, p64, g64) = grads
        torch.testing.assert_close(l64, l1, atol=1e-5, rtol=0)
        torch.testing.assert_close(p64, p1, atol=1e-5, rtol=0)
        assert any(g.abs().sum() > 0 for g in g1)
        for a, b in zip(g1, g64, strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(lora, SEQS, TARGETS, PAD, side, multiple=64),
                                   sequence_logprobs(lora, SEQS, TARGETS, PAD, side, multiple=1),
                                   atol=1e-5, rtol=0)
        targets = [[4, 5], [6], [7, 8, 9]]
        torch.testing.assert_close(text_nll(lora, prompts, targets, PAD, side, multiple=64),
                                   text_nll(lora, prompts, targets, PAD, side, multiple=1),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", SIDES)
def test_sequence_logprobs_match_hand_computation(model, side):
    got = sequence_logprobs(model, SEQS, TARGETS, PAD, side)
    want = [sum(_by_hand(model, s, n)) for s, n in zip(SEQS, TARGETS, strict=True)]
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    # token_logprobs: the same per-token values at the continuation positions
    ids, mask, tmask, pos = pad_batch(SEQS, TARGETS, PAD, side)
    with torch.no_grad():
        tok = token_logprobs(model, ids, mask, pos)
    assert tok.shape == ids.shape and (tok[:, 0] == 0).all()
    for r, (s, n) in enumerate(zip(SEQS, TARGETS, strict=True)):
        assert tok[r][tmask[r].bool()].tolist() == pytest.approx(_by_hand(model, s, n), abs=1e-5)


def test_left_and_right_padding_agree(model):
    left = sequence_logprobs(model, SEQS, TARGETS, PAD, "left")
    right = sequence_logprobs(model, SEQS, TARGETS, PAD, "right")
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    # a row's value does not depend on the rest of the batch nor on the pad id
    alone = sequence_logprobs(model, SEQS[1:2], TARGETS[1:2], PAD, "left")
    other_pad = sequence_logprobs(model, SEQS, TARGETS, VOCAB - 1, "right")
    torch.testing.assert_close(alone[0], right[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(other_pad, right, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", SIDES)
def test_choice_loss_matches_hand_cross_entropy(model, side):
    prompts = [[3, 14, 15, 9, 2, 6], [27, 18], [31, 41, 59, 26, 53]]
    options = [[10], [20, 21], [30, 31, 32]]  # multi-token options of different lengths
    labels = [2, 0, 1]
    loss, logp = choice_loss(model, prompts, options, labels, PAD, side)
    assert logp.shape == (3, 3) and loss.shape == ()
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    want_rows, want_ce = [], []
    for p, y in zip(prompts, labels, strict=True):
        ll = torch.tensor([sum(_by_hand(model, [*p, *o], len(o))) for o in options],
                          dtype=torch.float64)
        row = ll - torch.logsumexp(ll, 0)
        want_rows.append(row)
        want_ce.append(-row[y])
    torch.testing.assert_close(logp.double(), torch.stack(want_rows), atol=1e-5, rtol=0)
    assert loss.item() == pytest.approx(torch.stack(want_ce).mean().item(), abs=1e-5)


@pytest.mark.parametrize("side", SIDES)
def test_text_nll_is_the_mean_over_target_tokens(model, side):
    prompts = [[5, 9, 2, 33], [12, 3], [60, 1, 22, 45, 9, 9]]
    targets = [[17, 8, 40], [7], [30, 11, 4, 19, 2]]  # 9 target tokens, unequal per row
    got = text_nll(model, prompts, targets, PAD, side)
    nll = [-lp for p, t in zip(prompts, targets, strict=True)
           for lp in _by_hand(model, [*p, *t], len(t))]
    assert got.item() == pytest.approx(sum(nll) / len(nll), abs=1e-5)
    # the pad id does not enter
    assert text_nll(model, prompts, targets, VOCAB - 1, side).item() == pytest.approx(
        got.item(), abs=1e-5)


class _FixedLogits(torch.nn.Module):
    """A 'model' whose logits are one parameter: its gradient shows which logits a loss reads."""

    def __init__(self, batch: int, width: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(batch, width, VOCAB))

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep=0):
        del attention_mask, position_ids
        logits = self.table[:, :input_ids.shape[1]]
        if isinstance(logits_to_keep, torch.Tensor):  # positions, as transformers takes them
            return SimpleNamespace(logits=logits[:, logits_to_keep])
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


@pytest.mark.parametrize("side", SIDES)
def test_text_nll_reads_only_the_logits_before_target_tokens(side):
    prompts, targets = [[5, 9, 2, 33], [12, 3], [60, 1, 22, 45, 9, 9]], [[17, 8], [7], [30]]
    width = 7
    torch.manual_seed(1)
    fake = _FixedLogits(len(prompts), width)
    text_nll(fake, prompts, targets, PAD, side).backward()
    reads = (fake.table.grad.abs().sum(-1) > 0).int().tolist()
    # the logit at j - 1 for each target token j; prompt-scoring and padding logits get none
    want = {"right": [[0, 0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0]],
            "left": [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1, 0]]}
    assert reads == want[side]


def test_add_lora_trains_only_the_adapters():
    peft_model = add_lora(_tiny_model(), r=4, alpha=8)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == set(LORA_PROJECTIONS[:7])  # every Llama attention and MLP projection
    loss, _ = choice_loss(peft_model, [[3, 14, 15, 9], [27, 18, 2]], [[10], [20], [30, 31]],
                          [1, 2], PAD)
    loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(p.grad is None for p in peft_model.parameters() if not p.requires_grad)
    # lora_B starts at zero: the first gradient reaches B (through A's random projection) only
    b_norm = sum(g.abs().sum().item() for n, g in grads.items() if "lora_B" in n)
    a_norm = sum(g.abs().sum().item() for n, g in grads.items() if "lora_A" in n)
    assert b_norm > 0
    assert a_norm == 0
    assert all(grads[n].abs().sum() > 0 for n in grads if "lora_B" in n)
    # the wrapper passes position ids and logits_to_keep (positions) through
    with torch.no_grad():
        left = sequence_logprobs(peft_model, SEQS, TARGETS, PAD, "left")
        right = sequence_logprobs(peft_model, SEQS, TARGETS, PAD, "right")
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)


def test_single_token_options_fast_path_equals_hand_values(model):
    """One-token options take one right-padded forward per prompt (the simulator's rule); the
    values are the hand-computed option log-likelihoods renormalised over the options."""
    prompts = [[3, 14, 15, 9, 2, 6], [27, 18], [31, 41, 59, 26, 53]]
    options = [[10], [20], [30], [40]]
    labels = [3, 0, 1]
    loss, logp = choice_loss(model, prompts, options, labels, PAD)
    for i, (p, y) in enumerate(zip(prompts, labels, strict=True)):
        ll = torch.tensor([sum(_by_hand(model, [*p, *o], 1)) for o in options],
                          dtype=torch.float64)
        torch.testing.assert_close(logp[i].double(), ll - torch.logsumexp(ll, 0), atol=1e-5,
                                   rtol=0)
    want = -torch.stack([logp[i, y] for i, y in enumerate(labels)]).mean()
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)


def test_choice_loss_overfits_a_small_set_with_lora():
    rng = random.Random(0)
    prompts = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(5, 12))] for _ in range(16)]
    options = [[40], [41], [42], [43]]
    labels = [rng.randrange(4) for _ in prompts]
    # At the default init (0.02) the frozen LM head and final norm bound the gap between two
    # option logits by about 1, so no adapter gets the loss below ~0.9; a trained LM head (and
    # this one at init 0.1) has no such bound. Default LoRA targets, zero-initialised B.
    peft_model = add_lora(_tiny_model(init=0.1), r=8, alpha=16)
    peft_model.train()
    opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(300):
        loss, _ = choice_loss(peft_model, prompts, options, labels, PAD)
        losses.append(loss.item())
        if losses[-1] <= 0.1 * losses[0]:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] <= 0.1 * losses[0], (len(losses), losses[0], losses[-1])


def test_add_lora_on_the_last_layers_only():
    peft_model = add_lora(_tiny_model(), r=4, alpha=8, last_layers=1)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".layers.1." in n for n in trainable)
    with pytest.raises(ValueError, match="last_layers"):
        add_lora(_tiny_model(), last_layers=3)


class _MaskRecorder(torch.nn.Module):
    """The tiny model, recording each attention mask it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.masks = _tiny_model(), []

    def forward(self, **kw):
        self.masks.append(kw["attention_mask"])
        return self.inner(**kw)


def test_training_losses_pad_on_the_right():
    """No query row is fully masked in training (each padding query sees the real tokens before
    it): left padding gave NaN gradients through SDPA on an H100. Values as in the tests above."""
    rec = _MaskRecorder()
    prompts = [[3, 14, 15, 9, 2, 6], [27, 18], [31, 41, 59, 26, 53]]
    choice_loss(rec, prompts, [[10], [20], [30]], [0, 1, 2], PAD)  # one-token options
    choice_loss(rec, prompts, [[10], [20, 21]], [0, 1, 1], PAD)
    text_nll(rec, prompts, [[17, 8], [7], [30]], PAD)
    sequence_logprobs(rec, SEQS, TARGETS, PAD)
    assert len(rec.masks) == 4
    assert all(bool(m[:, 0].all()) and bool((m.diff(dim=-1) <= 0).all()) for m in rec.masks)
    nothing = sequence_logprobs(rec, [[3, 4], [5, 6, 7]], [0, 0], PAD)
    assert nothing.tolist() == [0.0, 0.0]
