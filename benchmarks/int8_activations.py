"""Would int8 activations pay on this CPU? fbgemm's dynamic int8 linear against fp32.

Times, for SmolLM2-135M's linear shapes at 1,024 rows (a training step's
largest micro-batch), the same row-wise int8 weights multiplied four ways:

* ``onednn``: de-quantized fp32 weight, oneDNN's matmul (lorabook's path
  for widening products, ``int8cpu.linear``);
* ``sgemm``: de-quantized fp32 weight, ``F.linear`` (MKL);
* ``fbgemm``: ``torch.ops.quantized.linear_dynamic``, the activations
  quantized to 8 bits per tensor on every call (AVX2 integer dot products);
* ``fbgemm_row``: the same, each row first divided by its absmax and the
  output multiplied back, which makes the activation scale per row.

and prints each one's GFLOP/s (best of repeats over half a second, timed
as the benchmark times its products, `bench._best_seconds`) and its error
against the exact product in fp64. Activation noise has to pass through 30
layers and the backward pass, so it is judged by the error, not only the
speed.

    .venv/bin/python -m benchmarks.int8_activations

Run on the 2-core build machine (2026-12-02, torch 2.13.0+cpu, 2 threads):
in two runs fbgemm gave 187-242 GFLOP/s against oneDNN's 122-150 (1.3-1.6x),
with a relative error of 2.1-2.2% (1.5-1.6% per row) against 4e-7 for fp32. lorabook does not use it
(benchmarks/README.md, "Tried and left out").
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    from benchmarks.harness import _best_seconds
    warnings.filterwarnings("ignore")   # quantized tensors are deprecated
    torch.manual_seed(0)
    rows = 1024
    # (in, out): gate/up, down, q/o, k/v of SmolLM2-135M
    for k, n in [(576, 1536), (1536, 576), (576, 576), (576, 192)]:
        x = torch.randn(rows, k)
        w = torch.randn(n, k) * 0.02
        scale = w.abs().amax(1) / 127
        q = torch.round(w / scale[:, None]).to(torch.int8)
        wq = torch._make_per_channel_quantized_tensor(
            q, scale.double(), torch.zeros(n, dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(wq, None)
        wd = q.float() * scale[:, None]

        def rowwise():
            a = x.abs().amax(1, keepdim=True).clamp_min(1e-12)
            return torch.ops.quantized.linear_dynamic(x / a, packed, True) * a

        ways = {
            "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, wd, None, "none", [None], ""),
            "sgemm": lambda: torch.nn.functional.linear(x, wd),
            "fbgemm": lambda: torch.ops.quantized.linear_dynamic(x, packed, True),
            "fbgemm_row": rowwise,
        }
        exact = x.double() @ wd.double().t()
        for name, fn in ways.items():
            seconds = _best_seconds(fn, 0.5)
            err = ((fn().double() - exact).norm() / exact.norm()).item()
            print(f"{rows}x{k} @ {k}x{n}  {name:10s} {2 * rows * k * n / seconds / 1e9:6.0f} "
                  f"GFLOP/s  relative error {err:.1e}")


if __name__ == "__main__":
    main()
