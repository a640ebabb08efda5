"""Training losses on a causal LM: continuation log-likelihoods, the choice loss, the text NLL, LoRA.

Every sequence is ``prompt + continuation`` as token ids; only the continuation is scored, with
the logits at position ``j - 1`` scoring token ``j``. Prompt and padding tokens never enter a
loss. Position ids count from 0 at each sequence's first real token, so left and right padding
give the same values (up to float rounding). Log-probabilities are float32 and keep their graph.

The model is anything called as ``model(input_ids=, attention_mask=, position_ids=,
logits_to_keep=).logits`` (a transformers causal LM, with or without a peft wrapper);
``logits_to_keep`` is a 1-D tensor of positions, so that only the scored positions go through
the LM head whatever the padding side.

Training pads on the right. With left padding, each padding position is a query that may attend
to nothing; with PyTorch 2.11's SDPA on an H100, the backward pass through such fully masked
rows turned the LoRA gradients to NaN after 43 good steps of the leave-one-event-out recipe,
where eager attention stayed finite. Right padding has no such rows: a padding query sees the
real tokens before it.

On CUDA the padded width is rounded up to a multiple of 64 (:data:`mfray.llm.prefix.CUDA_PAD_MULTIPLE`;
``multiple=`` overrides it): batches of a new width each cost cuDNN's attention a new plan, and
rounded widths repeat. Wider padding changes no value (the extra positions are padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from mfray.llm import pad, pad_multiple

Side = Literal["left", "right"]

# Linear projections that get LoRA adapters by default: Llama-family names, and the fused
# names of Phi-3 style models.
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                    "qkv_proj", "gate_up_proj")


def pad_batch(seqs: Sequence[Sequence[int]], targets: Sequence[int], pad_id: int,
              side: Side = "right", multiple: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad ``seqs`` (prompt + continuation ids) into one batch, on the CPU, with
    :func:`mfray.llm.prefix.pad` (its width the longest sequence rounded up to ``multiple``).

    ``targets[i]`` is how many of the last tokens of ``seqs[i]`` are its continuation; it must be
    below ``len(seqs[i])`` (the first token has no logits to score it). Returns ``(input_ids,
    attention_mask, target_mask, position_ids)``, all ``long`` of shape ``[B, T]``: the mask is 1
    on real tokens, ``target_mask`` 1 on continuation tokens only, and position ids count from 0
    at each sequence's first real token (padding gets 0 on the left, the last position on the
    right).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    if not seqs or len(seqs) != len(targets):
        raise ValueError(f"need as many targets as sequences (>= 1): {len(seqs)} sequences, "
                         f"{len(targets)} targets")
    for i, (s, n) in enumerate(zip(seqs, targets, strict=True)):
        if not 0 <= n < len(s):
            raise ValueError(f"sequence {i}: {n} target tokens in a sequence of {len(s)} "
                             "(need 0 <= targets < length: the first token cannot be scored)")
    ids, mask, position_ids = pad(seqs, pad_id, side, multiple=multiple)
    target_mask = torch.zeros_like(mask)
    width = mask.shape[1]
    for r, (s, n) in enumerate(zip(seqs, targets, strict=True)):
        end = width if side == "left" else len(s)
        target_mask[r, end - n:end] = 1
    return ids, mask, target_mask, position_ids


def token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` float32 log-probability of each token under the logits one position earlier.

    Entry ``[b, j]`` is ``log_softmax(logits[b, j - 1])[input_ids[b, j]]`` and entry ``[b, 0]`` is
    0. Padding entries are meaningless: mask them (with ``target_mask``). Keeps the graph. This
    materialises ``[B, T, V]`` log-probs; the scoring functions below select the scored positions
    before the softmax instead.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return nn.functional.pad(picked, (1, 0))


def _device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    return dev if isinstance(dev, torch.device) else next(model.parameters()).device


def _multiple(model: Any, multiple: int | None) -> int:
    """The padding multiple: the device's rule (:func:`mfray.llm.prefix.pad_multiple`) unless given."""
    return pad_multiple(_device(model)) if multiple is None else multiple


def _continuation_logprobs(model: Any, seqs: Sequence[Sequence[int]], targets: Sequence[int],
                           pad_id: int, side: Side, multiple: int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat float32 log-probs of every continuation token, and the row each belongs to.

    One forward pass; only the logits of the positions from the first to the last one that
    scores a continuation token go through the LM head and the log-softmax.
    """
    ids, mask, target_mask, pos = (t.to(_device(model)) for t in pad_batch(
        seqs, targets, pad_id, side, _multiple(model, multiple)))
    scoring = target_mask[:, 1:].any(0).nonzero()[:, 0]  # logit at j scores token j + 1
    if scoring.numel() == 0:
        return torch.zeros(0, device=ids.device), torch.zeros(0, dtype=torch.long,
                                                              device=ids.device)
    lo, hi = int(scoring.min()), int(scoring.max()) + 1
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                   logits_to_keep=torch.arange(lo, hi, device=ids.device)).logits
    scored = target_mask[:, lo + 1:hi + 1].bool()  # token lo + 1 + k, scored by logit k
    logp = torch.log_softmax(logits[scored].float(), dim=-1)
    tok_lp = logp.gather(-1, ids[:, lo + 1:hi + 1][scored].unsqueeze(-1)).squeeze(-1)
    return tok_lp, scored.nonzero()[:, 0]


def sequence_logprobs(model: Any, seqs: Sequence[Sequence[int]], targets: Sequence[int],
                      pad_id: int, side: Side = "right", multiple: int | None = None
                      ) -> torch.Tensor:
    """``[B]`` float32 sum of the log-probs of the last ``targets[i]`` tokens of each sequence.

    One forward pass over the padded batch; prompt and padding are never counted, so the values do
    not depend on ``side``, the padded width or the other sequences in the batch. Keeps the
    graph. ``multiple``: the padded width's multiple (None: the device's rule).
    """
    tok_lp, rows = _continuation_logprobs(model, seqs, targets, pad_id, side, multiple)
    return torch.zeros(len(seqs), dtype=tok_lp.dtype, device=tok_lp.device).index_add(
        0, rows, tok_lp)


def choice_loss(model: Any, prompt_ids: Sequence[Sequence[int]],
                option_ids: Sequence[Sequence[int]], label_index: Sequence[int], pad_id: int,
                side: Side = "right", multiple: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the labelled option among the options, and the option log-probs.

    Each option's log-likelihood after each prompt (the sum over its tokens) is computed in one
    forward pass over ``B x n_options`` sequences, log-softmaxed over the options (the same
    options for every example) and scored against ``label_index``. Returns ``(loss, logp)``: the
    mean over the examples (scalar) and ``logp`` of shape ``[B, n_options]`` whose rows are
    normalised. Both keep the graph.
    """
    n_opt = len(option_ids)
    if n_opt == 0 or any(len(o) == 0 for o in option_ids):
        raise ValueError("need at least one option, each of at least one token")
    if len(prompt_ids) != len(label_index) or any(len(p) == 0 for p in prompt_ids):
        raise ValueError(f"need one non-empty prompt per label: {len(prompt_ids)} prompts, "
                         f"{len(label_index)} labels")
    if any(not 0 <= y < n_opt for y in label_index):
        raise ValueError(f"label index outside the {n_opt} options: {list(label_index)}")
    labels = torch.tensor(list(label_index), dtype=torch.long)
    if all(len(o) == 1 for o in option_ids):
        logp = _single_token_option_logprobs(model, prompt_ids, [o[0] for o in option_ids],
                                             pad_id, multiple)
    else:
        seqs = [[*p, *o] for p in prompt_ids for o in option_ids]
        targets = [len(o) for _ in prompt_ids for o in option_ids]
        option_lp = sequence_logprobs(model, seqs, targets, pad_id, side, multiple).view(
            len(prompt_ids), n_opt)
        logp = torch.log_softmax(option_lp, dim=-1)
    return nn.functional.nll_loss(logp, labels.to(logp.device)), logp


def _single_token_option_logprobs(model: Any, prompt_ids: Sequence[Sequence[int]],
                                  options: Sequence[int], pad_id: int,
                                  multiple: int | None = None) -> torch.Tensor:
    """Options of one token each: ONE sequence per prompt (right-padded), only the logits at
    each prompt's last token, restricted to the options and log-softmaxed: the simulator's
    scoring rule (``HFModel._score_first``) and the same values as the general path, at
    1/n_options of its cost and without materialising logits at every position."""
    ids, mask, _, pos = (t.to(_device(model)) for t in pad_batch(
        prompt_ids, [0] * len(prompt_ids), pad_id, "right", _multiple(model, multiple)))
    keep, col = torch.unique(mask.sum(-1) - 1, sorted=True, return_inverse=True)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                   logits_to_keep=keep).logits
    logits = logits[torch.arange(len(prompt_ids), device=ids.device), col].float()
    cols = torch.tensor(list(options), dtype=torch.long, device=logits.device)
    return torch.log_softmax(logits[:, cols], dim=-1)


def text_nll(model: Any, prompt_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]],
             pad_id: int, side: Side = "right", multiple: int | None = None) -> torch.Tensor:
    """Mean token NLL of the targets after their prompts: the sum of the negative log-probs of
    all target tokens in the batch over their number (prompt and padding masked). Scalar float32
    with its graph."""
    if len(prompt_ids) != len(target_ids) or any(len(p) == 0 for p in prompt_ids):
        raise ValueError(f"need one non-empty prompt per target: {len(prompt_ids)} prompts, "
                         f"{len(target_ids)} targets")
    if sum(len(t) for t in target_ids) == 0:
        raise ValueError("no target tokens to score")
    seqs = [[*p, *t] for p, t in zip(prompt_ids, target_ids, strict=True)]
    tok_lp, _ = _continuation_logprobs(model, seqs, [len(t) for t in target_ids], pad_id, side,
                                       multiple)
    return -tok_lp.mean()


def add_lora(model: Any, r: int = 8, alpha: int = 16, dropout: float = 0.0,
             target_modules: Sequence[str] | None = None,
             last_layers: int | None = None) -> Any:
    """Wrap ``model`` (in place) as a peft LoRA model for causal LM and return the peft model.

    By default the adapters go on every ``nn.Linear`` named one of :data:`LORA_PROJECTIONS`
    (attention and MLP projections) that the model has; with none of them, peft's default
    targets for the model type. ``last_layers = n`` adapts only the top ``n`` decoder layers,
    so the backward pass stops there (a CPU budget knob). Only the LoRA parameters require
    grad afterwards.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if target_modules is None:
        linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                  if isinstance(module, nn.Linear)}
        found = [p for p in LORA_PROJECTIONS if p in linear]
        target_modules = found or None
    layers = None
    if last_layers is not None:
        n_layers = int(model.config.num_hidden_layers)
        if not 1 <= last_layers <= n_layers:
            raise ValueError(f"last_layers must be in [1, {n_layers}], got {last_layers}")
        layers = list(range(n_layers - last_layers, n_layers))
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha,
                        lora_dropout=dropout, layers_to_transform=layers,
                        target_modules=None if target_modules is None else list(target_modules))
    peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        param.requires_grad_("lora_" in name)
    return peft_model
