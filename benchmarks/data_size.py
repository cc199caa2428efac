"""Test perplexity of the default recipe trained on fewer passages.

Chapter 5 compares the book's run with this one (benchmarks/data_size.json):
the same recipe, split, seed and test passages, trained on `--n-train`
passages for `--epochs` epochs. Rerun:

    .venv/bin/python -m benchmarks.data_size --n-train 160 --epochs 3
"""
import argparse
import datetime
import json
from pathlib import Path

import transformers

from lorabook import evaluate as E
from lorabook import model as M
from lorabook import preprocess as P
from lorabook import train as T
from lorabook.config import load_config


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=160)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    transformers.utils.logging.set_verbosity_error()
    cfg = load_config("default", n_train=args.n_train, epochs=args.epochs,
                      output_dir=f"runs/data_size_{args.n_train}")
    run = T.train(cfg, verbose=False)
    tok = M.load_tokenizer(cfg)
    _, _, enc = P.prepare_data(cfg, tok)
    model = M.load_trained_model(cfg, run.adapter_dir)
    sums, counts = E.response_nll(model, enc.splits["test"], P.collator(tok),
                                  cfg.eval_batch_size)
    out = dict(measured=str(datetime.date.today()), n_train=run.metrics["n_train"],
               recipe=dict(target_modules=cfg.to_dict()["target_modules"],
                           learning_rate=cfg.learning_rate),
               epochs=cfg.epochs, train_steps=run.metrics["train_steps"],
               best_val_loss=run.metrics["best_val_loss"],
               test_perplexity=E.perplexity(sums.sum(), counts.sum()),
               test_tokens=int(counts.sum()), n_test=run.metrics["n_test"])
    path = Path(__file__).with_name("data_size.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
