"""Which recipe learns the addresses' voice and era: a measured sweep.

Each recipe trains on the default preset's passages for `--epochs` epochs
with a validation evaluation at every epoch end, then generates for a
stratified draw of *validation* prompts (`--per-era` from each era; the
test split is kept for chapter 5) under each decoding. Each recipe is
judged by its validation loss and by the style measures against the
instructed base model on the same prompts and decoding: the era judge's
balanced accuracy and the "we/our/us" share's distance to the real
continuations', both with paired bootstrap 95% intervals. Chapters 3 and 5
read `benchmarks/recipe_sweep.json`. Rerun (finished recipes are kept):

    .venv/bin/python -m benchmarks.recipe_sweep

`--only NAME` runs some recipes; `--fresh` forgets the saved results.
"""
import argparse
import datetime
import json
import time
from pathlib import Path

import transformers

from lorabook import data as D
from lorabook import metrics as X
from lorabook import model as M
from lorabook import preprocess as P
from lorabook import train as T
from lorabook.config import load_config
from lorabook.generation import DECODINGS, few_shot, generate
from lorabook.sotu import era as E

OUT = Path(__file__).with_name("recipe_sweep.json")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
              "down_proj"]
# name -> config fields, on top of the default preset.
# "all linear, lr 5e-4" is the default preset itself: its run is the book's
# (runs/default), reused here when `make book` has trained it.
RECIPES = {
    "q,v, lr 5e-4": dict(target_modules=["q_proj", "v_proj"], learning_rate=5e-4),
    "all linear, lr 1e-3": dict(target_modules=ALL_LINEAR, learning_rate=1e-3),
    "all linear, lr 5e-4": dict(target_modules="all-linear", learning_rate=5e-4),
}
DEFAULT_RECIPE = "all linear, lr 5e-4"


def slug(name: str) -> str:
    return "-".join(name.replace(",", "").split())


def style_row(clf, texts, prompts, real, base_texts):
    """Style measures of `texts` and their paired comparison with the
    instructed base model's `base_texts` on the same prompts."""
    years = [s["year"] for s in prompts]
    truth = [E.era_of(y) for y in years]
    pred, pred_b = E.era_predict(clf, texts), E.era_predict(clf, base_texts)
    era = E.paired_era_difference(truth, pred, pred_b, seed=0)
    we = E.paired_share_gap([X.says_we(t) for t in real],
                            [X.says_we(t) for t in texts],
                            [X.says_we(t) for t in base_texts], truth, seed=0)
    return dict(era_balanced=era["a"], base_era_balanced=era["b"],
                era_diff=era["difference"], era_ci=[era["ci_low"], era["ci_high"]],
                we_share=we["a"], base_we_share=we["b"], real_we_share=we["real"],
                we_gap=we["gap"], we_ci=[we["ci_low"], we["ci_high"]],
                mean_words=X.mean_length_words(texts),
                real_mean_words=X.mean_length_words(real),
                stop_rate=None)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--per-era", type=int, default=30)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--only", nargs="+", choices=sorted(RECIPES))
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args()
    transformers.utils.logging.set_verbosity_error()
    saved = {} if args.fresh or not OUT.is_file() else json.loads(OUT.read_text())
    results = saved.get("recipes", {})

    base_cfg = load_config("default", epochs=args.epochs, n_evals=args.epochs)
    if base_cfg.epochs != load_config("default").epochs:
        raise SystemExit("--epochs must be the default preset's, whose run is reused")
    tokenizer = M.load_tokenizer(base_cfg)
    samples, _ = D.clean_samples(P.config_samples(base_cfg))
    full = D.split_samples(samples, seed=base_cfg.seed,
                           val_fraction=base_cfg.val_fraction,
                           test_fraction=base_cfg.test_fraction)
    train = P.prepare_data(base_cfg, tokenizer)[0]["train"]
    prompts = E.stratified_by_era(full["validation"], args.per_era, base_cfg.seed)
    real = [s["response"] for s in prompts]
    pool = E.judge_pool(samples, {s["group"] for k in ("validation", "test")
                                  for s in full[k]})
    clf = E.train_era_classifier([s["response"] for s in pool],
                                 [s["year"] for s in pool], seed=base_cfg.seed)
    years = [s["year"] for s in prompts]
    judge_real = E.era_balanced_accuracy(clf, real, years)
    eras = {e: sum(E.era_of(y) == e for y in years) for e in sorted({E.era_of(y) for y in years})}
    print(f"{len(prompts)} validation prompts {eras}; the judge on the real "
          f"continuations: {judge_real:.1%} balanced", flush=True)

    gen = lambda model, ps, kw: [g["text"] for g in generate(
        model, tokenizer, ps, max_new_tokens=args.max_new_tokens, **kw)]
    base_texts = (saved.get("instructed_base") or {}) if saved.get(
        "max_new_tokens") == args.max_new_tokens else {}
    if any(d not in base_texts for d in DECODINGS):
        base = M.load_model(base_cfg)
        corpus = D.corpus_for(train)
        told = [few_shot(s["prompt"], train, corpus) for s in prompts]
        with base.disable_adapter():
            for d, kw in DECODINGS.items():
                if d in base_texts:
                    continue
                t0 = time.time()
                base_texts[d] = gen(base, told, kw)
                print(f"instructed base, {d}: {time.time() - t0:.0f} s", flush=True)
        del base

    def save():
        OUT.write_text(json.dumps(dict(
            measured=str(datetime.date.today()), machine=M.device_description(),
            command="python -m benchmarks.recipe_sweep", epochs=args.epochs,
            per_era=args.per_era, eras=eras, n_prompts=len(prompts),
            max_new_tokens=args.max_new_tokens, judge_real_balanced=judge_real,
            prompt_ids=[s["id"] for s in prompts], instructed_base=base_texts,
            recipes=results), indent=1) + "\n")
    save()

    for name in args.only or RECIPES:
        if name in results and all(d in results[name]["decodings"]
                                   for d in DECODINGS):
            print(f"{name}: kept from {OUT.name}")
            continue
        fields = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in RECIPES[name].items()}
        cfg = (load_config("default") if name == DEFAULT_RECIPE else
               base_cfg.replace(output_dir=f"runs/recipe_sweep/{slug(name)}",
                                **fields))
        assert all(getattr(cfg, k) == v for k, v in fields.items()), name
        print(f"== {name}: training {cfg.epochs} epochs", flush=True)
        run = T.train(cfg, verbose=True)
        evals = [dict(epoch=round(r["epoch"], 2), eval_loss=r["eval_loss"])
                 for r in run.log_history if "eval_loss" in r]
        model = M.load_trained_model(cfg, run.adapter_dir)
        old = results.get(name, {}).get("decodings", {})
        row = dict(fields=RECIPES[name], val_loss_by_epoch=evals,
                   n_train=run.metrics["n_train"],
                   best_val_loss=run.metrics["best_val_loss"],
                   base_val_loss=run.metrics["base_val_loss"],
                   tokens_per_s=run.metrics["train_tokens_per_s"],
                   train_runtime_s=run.metrics["train_runtime_s"],
                   peak_memory_mb=run.metrics["peak_memory_mb"], decodings=old)
        for d, kw in DECODINGS.items():
            if d in old:
                continue
            t0 = time.time()
            texts = gen(model, [s["prompt"] for s in prompts], kw)
            row["decodings"][d] = dict(style_row(clf, texts, prompts, real,
                                                 base_texts[d]),
                                       seconds=time.time() - t0,
                                       examples=texts[:3])
            r = row["decodings"][d]
            print(f"  {d}: era {r['era_balanced']:.1%} (base {r['base_era_balanced']:.1%},"
                  f" diff CI {r['era_ci'][0]:+.3f}..{r['era_ci'][1]:+.3f}); we "
                  f"{r['we_share']:.1%} (base {r['base_we_share']:.1%}, real "
                  f"{r['real_we_share']:.1%}, gap CI {r['we_ci'][0]:+.3f}..{r['we_ci'][1]:+.3f});"
                  f" words {r['mean_words']:.1f}/{r['real_mean_words']:.1f}", flush=True)
        del model
        results[name] = row
        save()


if __name__ == "__main__":
    main()
