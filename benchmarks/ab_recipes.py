"""Back-to-back A/B runs of the benchmark's recipes and variants.

Runs `benchmarks.harness`'s child process for each named recipe or variant
(each in a fresh process, so peak RSS is its own), on the same batch plan,
alternating them `--reps` times so that drift of the machine hits all of
them alike, and prints one line per run plus the ratio of each to the
first name. Use it to measure one lever against a baseline; `lorabook
bench` (benchmarks/README.md) measures them all at once.

    .venv/bin/python -m benchmarks.ab_recipes lorabook lorabook_unfused
    .venv/bin/python -m benchmarks.ab_recipes lorabook reference --steps 4 --reps 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    from benchmarks import harness as B
    from lorabook.config import load_config
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+",
                    help=f"recipes {B.RECIPES} or variants {tuple(B.VARIANTS)}")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", help="write every run's entry to this file")
    a = ap.parse_args()
    cfg = load_config(a.preset)
    plan = B.batch_plan(cfg, a.steps)
    spec = dict(config=cfg.to_dict(), plan=plan, profile=False)
    runs: dict[str, list[dict]] = {n: [] for n in a.names}
    for rep in range(a.reps):
        for name in a.names:
            e = B._child(name, spec, allocator=B.recipe_allocator(name))
            runs[name].append(e)
            print(f"{rep} {name:18s} {e['tokens_per_s']:7.1f} real tok/s  "
                  f"peak RSS {e['peak_rss_mb']:6.0f} MB  "
                  f"saved {e['saved_tensors_mb']:5.0f} MB  "
                  f"val loss {e['val_loss']:.4f}", flush=True)
    base = a.names[0]
    med = {n: statistics.median(e["tokens_per_s"] for e in r) for n, r in runs.items()}
    rss = {n: statistics.median(e["peak_rss_mb"] for e in r) for n, r in runs.items()}
    print(f"\nmedians, ratios to {base}:")
    for n in a.names:
        print(f"  {n:18s} {med[n]:7.1f} tok/s ({med[n] / med[base]:.2f}x)  "
              f"{rss[n]:6.0f} MB ({rss[n] / rss[base]:.2f})")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
