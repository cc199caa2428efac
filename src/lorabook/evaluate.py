"""Evaluation stage (chapter 5): honest perplexity, generations, metrics.

Perplexity here is exp(total negative log-likelihood of the response tokens
/ number of response tokens) over a whole split: token-weighted, without
prompt or padding tokens, never an average of per-batch means. Base and
fine-tuned models are scored on exactly the same tokens: the base is the
same model with its LoRA adapter switched off.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from lorabook import data as D
from lorabook import metrics as X
from lorabook import model as M
from lorabook import preprocess as P
from lorabook import train as T
from lorabook.config import Config, LorabookError
from lorabook.speed.int8cpu import dequantized_for_inference
from lorabook.generation import (DECODING, DECODING_ALTERNATIVES, DECODING_NAME,
                                 chat_ids, describe_decoding, few_shot,
                                 generate, instructed_dataset,
                                 instructed_prompt)
from lorabook.memorization import memorization_check
from lorabook.sotu.era import ERA_BOUNDS, era_judge, stratified_by_era
from lorabook.speed.label_only import backbone_and_head, labelled_hidden

def new_prompts(splits: dict, all_samples, k: int = 4,
                shown: frozenset = frozenset()) -> list[dict]:
    """Prompts that are new to the model, by the rule of the data's corpus
    (`Corpus.new_prompts`): for the State of the Union, year/president
    pairs with no address; for other prompt/response data, the `k` test
    prompts least like any training prompt; for text-only data, `k` empty
    prompts (unconditional samples). `shown`: ids of test prompts shown
    already, which prompt/response data pass over while `k` others remain."""
    corpus = D.corpus_for(splits["train"])
    test = [s for s in splits["test"] if s["id"] not in shown]
    if len(test) >= k:
        splits = dict(splits, test=test)
    return corpus.new_prompts(splits, all_samples, k, X.build_overlap_index)


def shown_prompts(scored: list[dict], n: int) -> list[int]:
    """Indices of `n` scored prompts spread over time and addresses.

    Rule: order the scored prompts' groups (addresses) by year, take `n`
    groups evenly spaced in that order, and from each the first scored
    passage. With fewer groups than `n`, later passages of the groups
    fill the rest in the same order.
    """
    first: dict = {}
    for i, s in enumerate(scored):
        first.setdefault(s.get("group", s["id"]), i)
    groups = sorted(first, key=lambda g: (scored[first[g]].get("year") or 0, g))
    n = min(n, len(scored))
    if len(groups) >= n:
        at = np.linspace(0, len(groups) - 1, n).round().astype(int)
        return sorted(first[groups[a]] for a in dict.fromkeys(at.tolist()))
    picked = [first[g] for g in groups]
    rest = [i for i in range(len(scored)) if i not in set(picked)]
    return sorted(picked + rest[:n - len(picked)])


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean NLL), guarded: a huge mean gives inf, not an OverflowError."""
    # Adapted from Hugging Face's run_clm.py (perplexity = exp(eval_loss),
    # inf on OverflowError): the mean NLL is a token-weighted sum over the
    # response tokens, not the Trainer's mean of batch means.
    if n_tokens <= 0:
        raise LorabookError("perplexity needs at least one scored token")
    mean = total_nll / n_tokens
    return math.exp(mean) if mean < 700 else float("inf")


@torch.no_grad()
def shifted_logits(model, dataset, collator, batch_size: int = 16):
    """Yield (batch, shifted labels, shifted float logits) per batch.

    Position t's logits predict token t + 1, so both are shifted by one.
    The shared loop of every perplexity computation in the book.
    """
    model.eval()
    rows = [dataset[i] for i in range(len(dataset))]
    for i in range(0, len(rows), batch_size):
        feats = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")}
                 for r in rows[i:i + batch_size]]
        batch = {k: v.to(M.device()) for k, v in collator(feats).items()}
        labels = batch.pop("labels")
        yield batch, labels[:, 1:], model(**batch).logits[:, :-1].float()


@torch.no_grad()
def response_nll(model, dataset, collator, batch_size: int = 16):
    """Per-example summed NLL of the learned tokens, and their counts:
    summed per example, so the perplexity does not depend on batch size or
    padding. Batched longest first; the output layer runs at the labelled
    positions only (`speed.label_only`). Same result as full logits in
    corpus order (`test_fast_response_nll_equals_full_logits`)."""
    parts = backbone_and_head(model)
    if parts is None:
        return _response_nll_plain(model, dataset, collator, batch_size)
    backbone, head = parts
    model.eval()
    rows = [dataset[i] for i in range(len(dataset))]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    sums = np.zeros(len(rows))
    counts = np.zeros(len(rows), dtype=np.int64)
    with dequantized_for_inference(model):
        for start in range(0, len(rows), batch_size):
            idx = order[start:start + batch_size]
            batch = collator([{k: rows[i][k] for k in
                               ("input_ids", "attention_mask", "labels")}
                              for i in idx])
            batch = {k: v.to(M.device()) for k, v in batch.items()}
            h, t, row = labelled_hidden(backbone, batch)
            per = torch.zeros(len(idx), dtype=torch.float64, device=h.device)
            for j in range(0, len(t), 1024):     # bounded logits memory
                nll = torch.nn.functional.cross_entropy(
                    head(h[j:j + 1024]).float(), t[j:j + 1024],
                    reduction="none")
                per.index_add_(0, row[j:j + 1024], nll.double())
            sums[idx] = per.cpu().numpy()
            counts[idx] = np.bincount(row.cpu().numpy(), minlength=len(idx))
    return sums, counts


def _response_nll_plain(model, dataset, collator, batch_size: int):
    """Per-sample NLL sums and token counts from the full logits."""
    sums, counts = [], []
    for _, target, logits in shifted_logits(model, dataset, collator, batch_size):
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        mask = target != -100
        sums.extend((nll * mask).sum(1).double().tolist())
        counts.extend(mask.sum(1).tolist())
    return np.array(sums), np.array(counts)


def bootstrap_ci(sums, counts, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the token-weighted perplexity, resampling samples."""
    rng = np.random.default_rng(seed)
    n = len(sums)
    idx = rng.integers(0, n, size=(n_boot, n))
    ppl = np.exp(np.minimum(sums[idx].sum(1) / counts[idx].sum(1), 700))
    lo, hi = np.quantile(ppl, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def score_split(model, dataset, collator, cfg: Config, seed: int = 0,
                instructed=None) -> dict:
    """Base and fine-tuned perplexity with 95% CIs on the same tokens, and
    the base model's when told the task (`instructed`, from
    `instructed_dataset`), if given."""
    out = {}
    with model.disable_adapter():
        base = response_nll(model, dataset, collator, cfg.eval_batch_size)
        told = None if instructed is None else response_nll(
            model, instructed, collator, cfg.eval_batch_size)
    tuned = response_nll(model, dataset, collator, cfg.eval_batch_size)
    if told is not None and not np.array_equal(told[1], base[1]):
        raise LorabookError("the instructed prompts changed the scored "
                            "response tokens")
    scored = [("base", base), ("finetuned", tuned)]
    if told is not None:
        scored.insert(1, ("base_instructed", told))
    for name, (s, c) in scored:
        lo, hi = bootstrap_ci(s, c, cfg.bootstrap_samples, seed)
        out[name] = dict(perplexity=perplexity(s.sum(), c.sum()),
                         ci_low=lo, ci_high=hi, nll=float(s.sum()))
    out["tokens"] = int(base[1].sum())
    # Paired: share of bootstrap resamples where fine-tuning is better.
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base[0]), size=(cfg.bootstrap_samples, len(base[0])))
    delta = (base[0][idx].sum(1) - tuned[0][idx].sum(1)) / base[1][idx].sum(1)
    out["p_finetuned_better"] = float((delta > 0).mean())
    return out


# Rows x (longest prompt + new tokens) of a generation batch: at 46 KB of
# KV cache per position (SmolLM2-135M, fp32), about 0.9 GB.
GEN_POSITIONS = 20_000


def _timed(model, tokenizer, prompts, cfg, adapter: bool, **kw):
    """Generations of one model (adapter on or off), and seconds spent;
    then the heap's free pages go back, not to add to the next peak."""
    t0 = time.time()
    ctx = contextlib.nullcontext() if adapter else model.disable_adapter()
    with ctx:
        out = generate(model, tokenizer, prompts, batch_size=len(prompts),
                       max_positions=GEN_POSITIONS,
                       max_new_tokens=cfg.gen_max_new_tokens, **kw)
    M.release_free_memory()
    return out, time.time() - t0


SYSTEMS = ("base", "base_instructed", "finetuned")


def _text_stats(texts, refs, prompts, years, index) -> dict:
    return X.summarize_generations(texts, refs, index, prompts=prompts,
                                   years=years)


def _decoding_comparison(model, tokenizer, cfg, prompts, chosen, refs,
                         index, seconds) -> dict:
    """Why this decoding: the fine-tuned model on the first few scored
    prompts under each alternative, against the chosen decoding's
    generations (`chosen`) of the same prompts."""
    rows = []
    for label, kw, texts in (
            [(DECODING_NAME, DECODING, chosen)]
            + [(k, v, None) for k, v in DECODING_ALTERNATIVES.items()]):
        t0 = time.time()
        if texts is None:
            texts, _ = _timed(model, tokenizer, prompts, cfg, True, **kw)
            seconds[f"decoding: {label}"] = time.time() - t0
        tx = [t["text"] for t in texts]
        rows.append(dict(
            decoding=label, parameters=describe_decoding(kw),
            repeated_3grams=X.mean_repeated_ngram_rate(tx),
            loop_rate=X.loop_rate(tx), distinct_2=X.distinct_n(tx, 2),
            stop_rate=float(np.mean([t["stopped"] for t in texts])),
            mean_words=X.mean_length_words(tx), rouge_l=X.rouge_l(tx, refs)))
    r = X.summarize_generations(refs, refs, index)
    rows.append(dict(decoding="real texts", parameters="",
                     repeated_3grams=r["repeated_3gram_rate"],
                     loop_rate=r["loop_rate"], distinct_2=r["distinct_2"],
                     stop_rate=1.0, mean_words=r["mean_words"], rouge_l=1.0))
    return dict(n=len(prompts), rows=rows)


def _instruction_comparison(model, tokenizer, cfg, prompts, bare, told,
                            refs, seconds, corpus) -> dict:
    """Why one worked example: the base model with the instruction alone
    on the same prompts, against its bare (`bare`) and instructed (`told`)
    generations."""
    t0 = time.time()
    zero, _ = _timed(model, tokenizer, [instructed_prompt(p, corpus) for p in prompts],
                     cfg, False, **DECODING)
    seconds["instruction alone"] = time.time() - t0
    rows = []
    for label, texts in (("bare prompt", bare), ("instruction alone", zero),
                         ("instruction + one example", told),
                         ("real texts", None)):
        tx = refs if texts is None else [t["text"] for t in texts]
        rows.append(dict(
            base_model_prompt=label, rouge_l=X.rouge_l(tx, refs),
            talks_about_the_task=X.meta_rate(tx),
            stop_rate=1.0 if texts is None else
            float(np.mean([t["stopped"] for t in texts])),
            mean_words=X.mean_length_words(tx)))
    return dict(n=len(prompts), rows=rows)


def scored_prompts(cfg: Config, splits: dict, full: dict | None) -> list[dict]:
    """The test prompts the generation metrics score.

    Data with years: `n_metric_prompts` drawn evenly from the eras of the
    whole test split (`stratified_by_era`), so that each era has enough
    prompts for the era and voice comparisons. Other data: a seeded sample
    of `n_metric_prompts` from the test subset.
    """
    test = splits["test"]
    pool = (full or splits)["test"]
    if all(s.get("year") is not None for s in pool):
        per_era = math.ceil(cfg.n_metric_prompts / (len(ERA_BOUNDS) + 1))
        return stratified_by_era(pool, per_era, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_metric = min(cfg.n_metric_prompts, len(test))
    return [test[i] for i in sorted(rng.choice(len(test), n_metric, replace=False))]


def evaluate_generations(model, tokenizer, cfg: Config, splits: dict,
                         all_samples, run_path: Path,
                         verbose: bool = True, full: dict | None = None
                         ) -> tuple[dict, dict | None]:
    """Generations of the three systems, their metrics and the era judge.

    Systems: the base model on the bare training prompt ("base"), the base
    model told the task with one worked example ("base_instructed",
    `few_shot`), and the fine-tuned model on the training prompt. All use
    `DECODING`. The scored prompts are `scored_prompts`; the shown ones are
    picked from them by `shown_prompts`, plus the new prompts of
    `new_prompts`. `full` holds the splits before their subsets were drawn.
    """
    train = splits["train"]
    scored = scored_prompts(cfg, splits, full)
    n_metric = len(scored)
    show_at = shown_prompts(scored, cfg.n_generation_prompts)
    new = new_prompts(splits, all_samples,
                      shown=frozenset(scored[i]["id"] for i in show_at))
    items = scored + new              # all prompts, in as few batches as fit
    bare = [s["prompt"] for s in items]
    # Once: it reads every training prompt.
    corpus = D.corpus_for(train, cfg.instruction)
    told = [few_shot(p, train, corpus) for p in bare]
    if verbose:
        print(f"Generating for {n_metric} test prompts and {len(new)} new "
              f"ones, three systems ...", flush=True)
    seconds, tokens = {}, {}
    gens = {}
    for name, prompts, adapter in (("finetuned", bare, True),
                                   ("base", bare, False),
                                   ("base_instructed", told, False)):
        gens[name], seconds[name] = _timed(model, tokenizer, prompts, cfg,
                                           adapter, **DECODING)
        tokens[name] = sum(g["n_tokens"] for g in gens[name])
        if verbose:
            print(f"  {name}: {len(prompts)} generations in "
                  f"{seconds[name]:.0f} s", flush=True)

    refs = [s["response"] for s in scored]
    years = [s.get("year") for s in scored]
    index = X.build_overlap_index([s["response"] for s in train])
    out = dict(
        settings=dict(max_new_tokens=cfg.gen_max_new_tokens,
                      decoding=DECODING, name=DECODING_NAME),
        n_prompts=n_metric, n_new=len(new), seconds=seconds,
        prompt_tokens={k: float(np.mean([
            len(P.prompt_ids(p, tokenizer) if isinstance(p, str)
                else chat_ids(p, tokenizer)) for p in ps]))
            for k, ps in (("finetuned", bare), ("base", bare),
                          ("base_instructed", told))},
        tokens_per_s=sum(tokens.values()) / sum(seconds.values()))
    for name in SYSTEMS:
        g = gens[name][:n_metric]
        m = _text_stats([x["text"] for x in g], refs, bare[:n_metric],
                        years, index)
        m["stop_rate"] = float(np.mean([x["stopped"] for x in g]))
        out[name] = m
    ref = _text_stats(refs, refs, bare[:n_metric], years, index)
    ref["stop_rate"] = 1.0
    out["reference"] = {k: ref[k] for k in (
        "distinct_1", "distinct_2", "repeated_3gram_rate", "loop_rate",
        "mean_words", "we_rate", "stop_rate", "anachronism_rate",
        "meta_rate")}

    n_dec = min(16, n_metric)
    out["decoding_comparison"] = _decoding_comparison(
        model, tokenizer, cfg, bare[:n_dec], gens["finetuned"][:n_dec],
        refs[:n_dec], index, seconds)
    out["instruction_comparison"] = _instruction_comparison(
        model, tokenizer, cfg, bare[:n_dec], gens["base"][:n_dec],
        gens["base_instructed"][:n_dec], refs[:n_dec], seconds, corpus)

    # Records of the shown generations, for the chapter and the assessment.
    shown = list(show_at) + list(range(n_metric, len(items)))
    with open(run_path / "generations.jsonl", "w") as f:
        for i in shown:
            s = items[i]
            rec = dict(source="test" if i < n_metric else "new",
                       id=s["id"], year=s.get("year"), prompt=s["prompt"],
                       instructed_prompt=told[i][-1],
                       example_prompt=told[i][0],
                       example_response=told[i][1],
                       reference=s.get("reference", s.get("response"))
                       if i < n_metric else s.get("reference"),
                       kind=s.get("kind", "test prompt"))
            for name in SYSTEMS:
                rec[name] = gens[name][i]["text"]
                rec[f"{name}_stopped"] = gens[name][i]["stopped"]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    out["new_prompts"] = [{k: v for k, v in p.items() if k != "reference"}
                          for p in new]

    style = None
    if all(s.get("year") is not None for s in train + scored):
        style = era_judge(cfg, full or splits, all_samples, scored,
                          {k: [g["text"] for g in gens[k][:n_metric]]
                           for k in SYSTEMS})
        for k in SYSTEMS:
            out[k]["era_balanced"] = style[k]["balanced"]
    return out, style


# Bumped when what evaluate_run computes changes, so a cached eval.json of
# an older version is recomputed. (8: "nucleus sampling" renamed "sampling
# at temperature 0.8", the same settings.)
EVAL_VERSION = 8


def evaluate_run(cfg: Config, run: T.Run | None = None, *,
                 verbose: bool = True, force: bool = False) -> dict:
    """Everything chapter 5 shows; cached in the run directory."""
    run = run or T.load_run(T.run_dir(cfg))
    eval_path = run.path / "eval.json"
    if not force and eval_path.is_file():
        cached = T.read_json(eval_path)
        if cached.get("config_hash") == cfg.hash() and \
                cached.get("eval_version") == EVAL_VERSION:
            if verbose:
                print(f"Reusing the evaluation in {eval_path}")
            return cached
    t_start = time.time()
    tokenizer = M.load_tokenizer(cfg)
    splits, _, enc = P.prepare_data(cfg, tokenizer)
    saved = T.read_json(run.path / "split.json")
    if saved != {k: [s["id"] for s in v] for k, v in splits.items()}:
        raise LorabookError(
            f"the data no longer gives the split this run was trained on "
            f"({run.path / 'split.json'}); retrain with `lorabook train`")
    model = M.load_trained_model(cfg, run.adapter_dir)
    collator = P.collator(tokenizer)

    if verbose:
        print("Scoring test and validation perplexity ...", flush=True)
    result = dict(config_hash=cfg.hash(), eval_version=EVAL_VERSION)
    # The instructed base model's words: the config's, else the corpus's.
    corpus = D.corpus_for(splits["train"], cfg.instruction)
    for name in ("test", "validation"):
        told = instructed_dataset(enc.splits[name], splits[name],
                                  splits["train"], tokenizer, corpus)
        result[name] = score_split(model, enc.splits[name], collator, cfg,
                                   instructed=told)
        M.release_free_memory()

    all_samples = P.config_samples(cfg, min_samples=1)
    full = P.full_splits(cfg)
    result["generation"], style = evaluate_generations(
        model, tokenizer, cfg, splits, all_samples, run.path, verbose,
        full=full)
    if style is not None:
        result["style"] = style
    # The contamination check needs control texts that no model can have
    # seen, written for the corpus; data without them skip it.
    control = corpus.control
    if control:
        if verbose:
            print("Contamination check (greedy continuations of plain openings) ...",
                  flush=True)
        scored = scored_prompts(cfg, splits, full)
        result["memorization"] = memorization_check(model, tokenizer, scored,
                                                    control=control)
    result["eval_runtime_s"] = time.time() - t_start

    # Flat keys in the run's metrics.json, as the CLI and book quote them.
    flat = dict(
        base_test_perplexity=result["test"]["base"]["perplexity"],
        finetuned_test_perplexity=result["test"]["finetuned"]["perplexity"],
        finetuned_test_perplexity_ci=[result["test"]["finetuned"]["ci_low"],
                                      result["test"]["finetuned"]["ci_high"]],
        base_test_perplexity_ci=[result["test"]["base"]["ci_low"],
                                 result["test"]["base"]["ci_high"]],
        base_instructed_test_perplexity=result["test"]["base_instructed"]["perplexity"],
        test_response_tokens=result["test"]["tokens"],
        base_val_perplexity=result["validation"]["base"]["perplexity"],
        finetuned_val_perplexity=result["validation"]["finetuned"]["perplexity"],
        rouge_l=result["generation"]["finetuned"]["rouge_l"],
        bleu=result["generation"]["finetuned"]["bleu"],
        base_rouge_l=result["generation"]["base_instructed"]["rouge_l"],
        base_bleu=result["generation"]["base_instructed"]["bleu"],
        bare_base_rouge_l=result["generation"]["base"]["rouge_l"],
        stop_rate=result["generation"]["finetuned"]["stop_rate"],
        base_stop_rate=result["generation"]["base_instructed"]["stop_rate"],
    )
    if "style" in result:
        flat["style_accuracy"] = result["style"]["finetuned"]["balanced"]
        flat["base_style_accuracy"] = result["style"]["base_instructed"]["balanced"]
        flat["style_ceiling"] = result["style"]["real"]["balanced"]
        paired = result["style"].get("paired")
        if paired:
            flat["era_gain_vs_instructed"] = paired["era"]["difference"]
            flat["era_gain_ci"] = [paired["era"]["ci_low"], paired["era"]["ci_high"]]
            flat["we_gap_vs_instructed"] = paired["we"]["gap"]
            flat["we_gap_ci"] = [paired["we"]["ci_low"], paired["we"]["ci_high"]]
    result["summary"] = flat
    metrics = dict(run.metrics, **flat)
    T.write_json(run.path / "metrics.json", metrics)
    T.write_json(eval_path, result)
    return result


def load_generations(run_path) -> list[dict]:
    with open(Path(run_path) / "generations.jsonl") as f:
        return [json.loads(line) for line in f]
