"""Do more scored prompts make the era and voice comparisons decisive?

The book's evaluation scores 96 test prompts, 32 from each era. This
evaluates the book's finished run again with `--n` prompts (a copy of the
run, so the book's own evaluation stays) and writes the paired
comparisons of the fine-tuned model with the instructed base model to
benchmarks/era_prompts.json. Rerun (about 13 minutes for 192 prompts on a
2-core CPU):

    .venv/bin/python -m benchmarks.era_prompts --n 192

`--from-run DIR` only summarises a run directory already evaluated that way
(`lorabook evaluate --run DIR --set n_metric_prompts=N`).
"""
import argparse
import datetime
import json
import shutil
import subprocess
from pathlib import Path

from lorabook import evaluate as E
from lorabook import train as T
from lorabook.config import REPO_ROOT, load_config
from lorabook.report import machine_summary


def summary(res: dict) -> dict:
    st, g = res["style"], res["generation"]
    return dict(
        n_metric_prompts=g["n_prompts"], per_era=st["eras"],
        era=st["paired"]["era"], we=st["paired"]["we"],
        real_era_balanced=st["real"]["balanced"],
        mean_words={k: g[k]["mean_words"]
                    for k in ("finetuned", "base_instructed", "reference")},
        eval_runtime_s=res["eval_runtime_s"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=192)
    p.add_argument("--from-run", type=Path)
    p.add_argument("--commit", help="the commit that evaluated --from-run")
    args = p.parse_args()
    if args.from_run:
        res = T.read_json(args.from_run / "eval.json")
    else:
        cfg = load_config("default")
        src = T.run_dir(cfg)
        dst = REPO_ROOT / f"runs/era_prompts_{args.n}"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
        res = E.evaluate_run(cfg.replace(n_metric_prompts=args.n),
                             T.load_run(dst), force=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    out = dict(measured=str(datetime.date.today()), machine=machine_summary(),
               commit=args.commit or commit.stdout.strip(),
               command=f"python -m benchmarks.era_prompts --n {args.n}",
               **summary(res))
    path = Path(__file__).with_name("era_prompts.json")
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
