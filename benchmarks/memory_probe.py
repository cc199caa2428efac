"""Where a training step's memory goes: resident memory against saved tensors.

Loads one recipe's model in this process, trains a few warm-up steps on
the benchmark's batch plan and then one step of its largest batch. Prints
the RSS after each stage, the RSS before that step and the step's own peak
(Linux: VmHWM reset through /proc/self/clear_refs), and the tensors one
forward pass keeps for the backward pass.

    .venv/bin/python -m benchmarks.memory_probe lorabook
    .venv/bin/python -m benchmarks.memory_probe lorabook --set gradient_checkpointing=true

The allocator is the process's own; compare, for instance:

    LD_PRELOAD=$(.venv/bin/python -m lorabook.speed.alloc) .venv/bin/python -m benchmarks.memory_probe
    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python -m benchmarks.memory_probe

Measured on the 2-core build machine (2026-12-01), lorabook's largest step
(1,024 positions): +1765 MB under glibc, +921 MB with the fixed mmap
threshold (what is live; 847 MB of it saved for backward). With that
threshold `ab_recipes.py lorabook` ran at 84 real tok/s against 153 under
glibc's defaults; under tcmalloc at 155 and 135 against 151 and 143 (two
alternating pairs), with a peak RSS of 1792 MB against 2555 MB.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def status(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> None:
    import warnings
    warnings.filterwarnings("ignore")
    from benchmarks import harness as B
    from lorabook import model as M
    from lorabook import preprocess as P
    from lorabook import train as T
    from lorabook.book import loop as L
    from lorabook.config import load_config
    import torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default="lorabook")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--set", action="append", default=[],
                    help="config override key=value (yaml value)")
    a = ap.parse_args()
    import yaml
    cfg = load_config(a.preset)
    rcfg = B.recipe_config(cfg, a.recipe)
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    rcfg = rcfg.replace(**over) if over else rcfg
    from lorabook.speed.alloc import active
    print("allocator", active())
    print("imports", round(status("VmRSS")), "MB")
    tok = M.load_tokenizer(rcfg)
    train_ds = B._encoded(rcfg, tok)["train"]
    plan = B.batch_plan(cfg, a.steps, train_ds)
    pad_to = B.REFERENCE_PAD_TO if rcfg.padding == "max_length" else rcfg.max_length
    collate = P.collator(tok, rcfg.padding, pad_to, rcfg.pad_to_multiple_of)
    keys = ("input_ids", "attention_mask", "labels")
    mb = T.micro_batch(rcfg) if rcfg.label_only_head else rcfg.batch_size
    steps = [[collate([{k: train_ds[i][k] for k in keys} for i in b[j:j + mb]])
              for j in range(0, len(b), mb)] for b in plan]
    largest = max(steps, key=lambda s: sum(b["input_ids"].numel() for b in s))
    print("data", round(status("VmRSS")), "MB")
    model = M.load_model(rcfg)
    print("model", round(status("VmRSS")), "MB")
    loop = L.LeanLoop(rcfg, model, len(steps) + 1)
    model.train()
    torch.manual_seed(0)
    for s in steps[:a.warmup]:
        loop.step(s)
    M.release_free_memory()
    before = status("VmRSS")
    reset_peak()
    loop.step(largest)
    step_peak = status("VmHWM")
    saved = B.saved_tensor_mb(model, lambda: loop.loss(largest[0]))
    print(f"largest step: {sum(b['input_ids'].numel() for b in largest)} positions "
          f"in micro-batches of {mb}")
    print(f"RSS before step {before:.0f} MB, step peak {step_peak:.0f} MB "
          f"(+{step_peak - before:.0f}); saved for backward {saved:.0f} MB (one micro-batch)")


if __name__ == "__main__":
    main()
