"""Does torch.compile pay on this CPU? Steps of lorabook's recipe, eager or compiled.

Trains lorabook's default recipe (train.LeanLoop) for 12 of the benchmark's
batches and prints each step's time and real tokens/s. With --compile every
decoder layer is compiled (`layer.compile(dynamic=True)`, one graph for all
sequence lengths); the first step then includes the compilation. Run it
twice, side by side, and compare steps 1-11:

    .venv/bin/python -m benchmarks.compile_trial
    .venv/bin/python -m benchmarks.compile_trial --compile

Trial on the 2-core build machine (2026-11-25, torch 2.13.0+cpu): the first
compiled step took 51 s, the later ones ran at 646-764 real tokens/s against
661-765 eager, so compiling is not lorabook's default.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    import torch
    from benchmarks import harness as B
    from lorabook import model as M, preprocess as P
    from lorabook.book import loop as L
    from lorabook.config import load_config
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args()
    cfg = B.recipe_config(load_config("default"), "lorabook")
    tok = M.load_tokenizer(cfg)
    train_ds = B._encoded(cfg, tok)["train"]
    collate = P.collator(tok, "longest")
    keys = ("input_ids", "attention_mask", "labels")
    steps = [[collate([{k: train_ds[i][k] for k in keys} for i in b])]
             for b in B.batch_plan(cfg, a.steps, train_ds)]
    model = M.load_model(cfg)
    if a.compile:
        for layer in model.get_base_model().model.layers:
            layer.compile(dynamic=True)
    loop = L.LeanLoop(cfg, model, len(steps))
    torch.manual_seed(cfg.seed)
    model.train()
    for i, micro in enumerate(steps):
        t = time.perf_counter()
        loss = loop.step(micro)
        dt = time.perf_counter() - t
        n = int(micro[0]["attention_mask"].sum())
        print(f"step {i:2d} {tuple(micro[0]['input_ids'].shape)} {dt:6.2f} s "
              f"{n / dt:6.0f} real tok/s  loss {loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
