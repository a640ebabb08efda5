"""Choice scoring on CPU inference engines: decisions/s and the option distributions' KL
against mfray's transformers float32 path (issue 39, its first measurement step).

The workload is mfray's hot path: for each policy prompt, the log-probabilities of the label
options' first tokens after the prompt (``HFModel.score``), with prompts as a run logs them
(``--set policy.log_prompts=true``) and formatted by the model's chat template as the inference
actor does (``model_input``). Whole rounds of the log are scored, one call per round in the
actor's canonical (simulation, agent) order, until at least ``--prompts`` prompts are taken.

Engines (each at ``--threads`` threads; warm-up excluded, median of ``--repeats`` passes):

- ``hf-fp32``: ``load_model(device="cpu", bf16="off")``, prefix sharing on (the baseline);
- ``hf-int8``: the same model with ``torch.ao.quantization.quantize_dynamic`` on its decoder
  layers' Linear (qint8 per-channel weights, activations quantised per batch), through the
  same HFModel code;
- ``ct2-*``: CTranslate2 on the same transformers directory, converted once in float32 and
  loaded with ``compute_type`` int8 or float32. ``forward`` runs whole prompts with
  ``Generator.forward_batch`` (no prefix reuse) and reads the logits at each last token;
  ``static`` runs each prefix group of :func:`mfray.llm.prefix.prefix_groups` as one
  ``generate_batch`` call with the group's shared prefix as ``static_prompt`` (computed once
  per call, not cached) and ``max_length=1``, reading the last step of ``return_logits_vocab``.

    python results/scripts/cpu_engines.py --log /tmp/e/run/prompts.jsonl \\
        --out /tmp/e/engines.json --threads 2 --batch 16 --repeats 3 --prompts 200 \\
        --engines hf-fp32 hf-int8 ct2-static
    python results/scripts/cpu_engines.py --log /tmp/e/run/prompts.jsonl \\
        --out /tmp/e/engines-b64.json --threads 2 --batch 64 --repeats 3 --prompts 200 \\
        --engines hf-fp32 hf-int8

Not part of the package: the measurement behind results/cpu-engines.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfray.bench import OPTIONS, _rounds_of
from mfray.llm.base import model_input
from mfray.llm.hf import HFModel
from mfray.llm.load import load_model, transformers_dir
from mfray.llm.prefix import prefix_groups

Scorer = Callable[[list[str]], np.ndarray]  # one call's prompts -> (n, options) log-probs


def read_rounds(log: Path, at_least: int) -> list[list[str]]:
    """The policy prompts in ``log`` by round, in order, cut after ``at_least`` prompts."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    rounds, n = [], 0
    for prompts in _rounds_of([r for r in rows if r["role"] == "policy"]):
        if n >= at_least:
            break
        rounds.append(prompts[:at_least - n])
        n += len(rounds[-1])
    return rounds


def normalise(logits: np.ndarray) -> np.ndarray:
    """Option logits -> log-probabilities over the options (float64)."""
    x = np.asarray(logits, dtype=np.float64)
    return x - np.logaddexp.reduce(x, axis=1, keepdims=True)


def hf_scorer(model: HFModel) -> Scorer:
    return lambda prompts: model.score(prompts, OPTIONS)


def int8_model(threads: int, batch: int) -> HFModel:
    """A fresh float32 copy with int8 dynamic quantisation (per-channel weights) of the decoder
    layers' nn.Linear; the tied embedding/lm_head stays float32 (quantising it too, per
    tensor, was 7.0 decisions/s at a mean KL of 0.64 on 84 prompts)."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    hf = load_model(device="cpu", bf16="off", batch_size=batch)
    hf.model.model = quantize_dynamic(hf.model.model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                      dtype=torch.qint8)
    hf.model_id += "+int8"
    return hf


def ct2_forward(gen: Any, ids_of: Callable[[list[str]], list[list[int]]], firsts: list[int],
                batch: int) -> Scorer:
    """Whole prompts through ``forward_batch``, longest first in chunks of ``batch`` rows."""
    def score(prompts: list[str]) -> np.ndarray:
        ids = ids_of(prompts)
        out = np.empty((len(ids), len(firsts)))
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for at in range(0, len(order), batch):
            rows = order[at:at + batch]
            logits = np.asarray(gen.forward_batch([ids[r] for r in rows]))
            out[rows] = [logits[k, len(ids[r]) - 1, firsts] for k, r in enumerate(rows)]
        return normalise(out)
    return score


def ct2_static(gen: Any, ids_of: Callable[[list[str]], list[list[int]]], tokens_of: Any,
               firsts: list[int], batch: int) -> Scorer:
    """One ``generate_batch`` per prefix group, its shared prefix as the ``static_prompt``."""
    def score(prompts: list[str]) -> np.ndarray:
        ids = ids_of(prompts)
        out = np.empty((len(ids), len(firsts)))
        for shared, rows in prefix_groups(ids):
            res = gen.generate_batch(
                [tokens_of(ids[r][shared:]) for r in rows],
                static_prompt=tokens_of(ids[rows[0]][:shared]) if shared else None,
                cache_static_prompt=False, max_length=1, max_batch_size=batch,
                include_prompt_in_result=False, return_logits_vocab=True)
            # rows past the batch's shortest are forced token by token: one logits row each;
            # the last is the distribution after the whole prompt
            out[rows] = [np.asarray(r.logits[0])[-1, firsts] for r in res]
        return normalise(out)
    return score


def timed(score: Scorer, rounds: list[list[str]], warmup: list[str], repeats: int
          ) -> tuple[np.ndarray, list[float]]:
    """(the scores of every prompt, the seconds of each pass), after one warm-up call."""
    score(warmup)
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = np.concatenate([score(r) for r in rounds])
        times.append(time.perf_counter() - t0)
    assert result is not None
    return result, times


def kl_rows(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(ref || other) per row, both log-probabilities (nats)."""
    return (np.exp(ref) * (ref - other)).sum(axis=1)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", type=Path, required=True, help="a run's prompts.jsonl")
    ap.add_argument("--out", type=Path, required=True, help="JSON results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=200, help="this many (rounds cut to fit)")
    ap.add_argument("--ct2-dir", type=Path, default=Path("/tmp/e/ct2-f32"),
                    help="the float32 CTranslate2 conversion (made here when missing)")
    ap.add_argument("--engines", nargs="+",
                    default=["hf-fp32", "hf-int8", "ct2-forward", "ct2-static"])
    args = ap.parse_args(argv)

    import ctranslate2
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    base = load_model(device="cpu", bf16="off", batch_size=max(args.batch))
    raw = read_rounds(args.log, args.prompts)
    rounds = [[model_input(base, p) for p in r] for r in raw]
    warmup = rounds[0][:16]
    n = sum(len(r) for r in rounds)
    tok = base.tokenizer
    firsts = [o[0] for o in base._option_ids(OPTIONS)]
    ids = base.encode([p for r in rounds for p in r])
    groups = [(s, len(g)) for r in rounds for s, g in prefix_groups(base.encode(r))]
    info = {"prompts": n, "rounds": len(rounds), "threads": args.threads,
            "mean_prompt_tokens": round(float(np.mean([len(i) for i in ids])), 1),
            "mean_shared_prefix_tokens": round(sum(s * k for s, k in groups)
                                               / sum(k for _, k in groups), 1),
            "prefix_groups": len(groups), "torch": torch.__version__,
            "transformers": transformers.__version__, "ctranslate2": ctranslate2.__version__}
    print(json.dumps(info), flush=True)

    results: list[dict[str, Any]] = []
    ref: np.ndarray | None = None

    def record(engine: str, precision: str, batch: Any, score: Scorer) -> None:
        nonlocal ref
        scores, times = timed(score, rounds, warmup, args.repeats)
        if ref is None:
            ref = scores
        kl = kl_rows(ref, scores)
        row = {"engine": engine, "precision": precision, "batch": batch,
               "decisions_per_s": round(n / statistics.median(times), 2),
               "seconds": [round(t, 2) for t in times],
               "mean_kl": float(kl.mean()), "max_kl": float(kl.max())}
        results.append(row)
        print(json.dumps(row), flush=True)

    for b in args.batch:  # the reference first: hf-fp32 at the first batch size
        if "hf-fp32" in args.engines or ref is None:
            base.batch_size = b
            record("transformers (HFModel)", "float32", b, hf_scorer(base))
    if "hf-int8" in args.engines:
        q = int8_model(args.threads, max(args.batch))
        for b in args.batch:
            q.batch_size = b
            record("transformers + torch dynamic int8", "int8 per-channel, decoder Linear", b, hf_scorer(q))
        del q
    ct2_dir = args.ct2_dir
    if any(e.startswith("ct2") for e in args.engines) and not (ct2_dir / "model.bin").is_file():
        ctranslate2.converters.TransformersConverter(str(transformers_dir(None))).convert(
            str(ct2_dir), quantization=None, force=True)

    def tokens_of(x: list[int]) -> list[str]:
        return tok.convert_ids_to_tokens(x)

    for compute in ("int8", "float32"):
        gen = ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type=compute,
                                    intra_threads=args.threads, inter_threads=1)
        if "ct2-forward" in args.engines:
            for b in args.batch:
                record("CTranslate2 forward_batch", compute, b,
                       ct2_forward(gen, base.encode, firsts, b))
        if "ct2-static" in args.engines:
            record("CTranslate2 generate_batch + static_prompt", compute, "group",
                   ct2_static(gen, base.encode, tokens_of, firsts, max(args.batch)))
        del gen
    args.out.write_text(json.dumps({"info": info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
