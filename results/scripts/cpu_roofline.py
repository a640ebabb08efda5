"""How fast can any engine score choices on this CPU? (issue 39, results/cpu-engines.md)

1. The matrix-multiply ceilings at SmolLM2-135M's shapes (1024 rows of 576 -> 1536): torch
   float32, ONNX Runtime (MLAS) float32, int8 (DynamicQuantizeMatMul) and 4-bit
   (MatMulNBits). ONNX Runtime is not an mfray dependency: ``pip install onnxruntime onnx``.
2. Where transformers float32 spends a scoring pass of real policy prompts (torch profiler),
   and the linear layers' FLOPs per decision.

    python results/scripts/cpu_roofline.py --log /tmp/e/run/prompts.jsonl

The prompt log comes from a run with ``--set policy.log_prompts=true`` (cpu_engines.py says
how). Not part of the package.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

M, K, N = 1024, 576, 1536


def rate(fn, flops: float, n: int = 20) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return flops / ((time.perf_counter() - t) / n) / 1e9


def ort_rates() -> dict[str, float]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    x = np.random.randn(M, K).astype(np.float32)
    w = (np.random.randn(K, N) * 0.05).astype(np.float32)
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]

    def session(node, inits):
        graph = helper.make_graph([node], "g", *io, inits)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
        return ort.InferenceSession(helper.make_model(graph, opset_imports=opsets)
                                    .SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])

    out = {}
    s = session(helper.make_node("MatMul", ["x", "W"], ["y"]), [numpy_helper.from_array(w, "W")])
    out["onnxruntime float32"] = rate(lambda: s.run(None, {"x": x}), 2 * M * K * N)
    scale = np.abs(w).max(0) / 127
    s = session(helper.make_node("DynamicQuantizeMatMul", ["x", "Wq", "ws", "wz"], ["y"],
                                 domain="com.microsoft"),
                [numpy_helper.from_array(np.round(w / scale).astype(np.int8), "Wq"),
                 numpy_helper.from_array(scale.astype(np.float32), "ws"),
                 numpy_helper.from_array(np.zeros(N, np.int8), "wz")])
    out["onnxruntime int8 (dynamic)"] = rate(lambda: s.run(None, {"x": x}), 2 * M * K * N)
    return out


def profile(log: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from mfray.bench import OPTIONS, _rounds_of
    from mfray.llm.base import model_input
    from mfray.llm.load import load_model
    from mfray.llm.prefix import prefix_groups

    rows = [json.loads(line) for line in Path(log).read_text(encoding="utf-8").splitlines()]
    hf = load_model(device="cpu", bf16="off", batch_size=64)
    prompts = [model_input(hf, p) for p in _rounds_of([r for r in rows
                                                       if r["role"] == "policy"])[1]]
    ids = hf.encode(prompts)
    computed = sum(len(ids[r]) - s for s, rs in prefix_groups(ids) for r in rs) + \
        sum(s for s, _ in prefix_groups(ids))
    hf.score(prompts[:16], OPTIONS)
    t = time.perf_counter()
    hf.score(prompts, OPTIONS)
    dt = time.perf_counter() - t
    with torch_profile(activities=[ProfilerActivity.CPU]) as p:
        hf.score(prompts, OPTIONS)
    mm = sum(e.self_cpu_time_total for e in p.key_averages() if e.key == "aten::mm") / 1e6
    total = sum(e.self_cpu_time_total for e in p.key_averages()) / 1e6
    c = hf.model.config
    kv = c.num_key_value_heads * c.hidden_size // c.num_attention_heads
    macs = c.num_hidden_layers * (2 * c.hidden_size ** 2 + 2 * c.hidden_size * kv
                                  + 3 * c.hidden_size * c.intermediate_size)
    gflop = 2 * macs * computed / len(prompts) / 1e9
    print(f"{len(prompts)} prompts, {computed / len(prompts):.1f} tokens computed each: "
          f"{len(prompts) / dt:.2f} decisions/s; {gflop:.1f} GFLOP of linear layers a "
          f"decision; matmul {mm / total:.0%} of the profiled time at "
          f"{gflop * len(prompts) / mm:.0f} GFLOP/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", help="a run's prompts.jsonl (for the profile)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    a, b = torch.randn(M, K), torch.randn(K, N)
    print(f"torch float32: {rate(lambda: a @ b, 2 * M * K * N):.0f} GFLOP/s")
    for name, r in ort_rates().items():
        print(f"{name}: {r:.0f} GOP/s")
    if args.log:
        profile(args.log)


if __name__ == "__main__":
    main()
