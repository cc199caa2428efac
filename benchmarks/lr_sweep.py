"""Validation loss of the default recipe at a few learning rates.

Chapter 3 reads benchmarks/lr_sweep.json to justify the learning rate: the
same recipe on a short run (`--n-train` passages, one epoch), one run per
rate. Rerun:

    .venv/bin/python -m benchmarks.lr_sweep
"""
import argparse
import datetime
import json
from pathlib import Path

import transformers

from lorabook import model as M
from lorabook import train as T
from lorabook.config import load_config


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--rates", type=float, nargs="+", default=[5e-5, 2e-4, 5e-4, 1e-3])
    args = p.parse_args()
    transformers.utils.logging.set_verbosity_error()
    rows = []
    for lr in args.rates:
        cfg = load_config("default", n_train=args.n_train, epochs=1, n_evals=2,
                          learning_rate=lr, output_dir=f"runs/lr_sweep/{lr:g}")
        run = T.train(cfg, verbose=False)
        rows.append(dict(learning_rate=lr, best_val_loss=run.metrics["best_val_loss"],
                         base_val_loss=run.metrics["base_val_loss"],
                         train_steps=run.metrics["train_steps"]))
        print(rows[-1], flush=True)
    out = dict(measured=str(datetime.date.today()), n_train=args.n_train, epochs=1,
               machine=M.device_description(), runs=rows)
    Path(__file__).with_name("lr_sweep.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
