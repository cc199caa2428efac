"""Evaluation stage (chapter 5): honest perplexity, generations, metrics.

Perplexity here is exp(total negative log-likelihood of the response tokens
/ number of response tokens) over a whole split: token-weighted, without
prompt or padding tokens, never an average of per-batch means. Base and
fine-tuned models are scored on exactly the same tokens: the base is the
same model with its LoRA adapter switched off.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from lorabook.config import Config, LorabookError
from lorabook import metrics as X
from lorabook import model as M
from lorabook.int8cpu import dequantized_for_inference
from lorabook import preprocess as P
from lorabook import train as T

# New prompts (not from the corpus): other years, speakers and topics.
NEW_PROMPTS = [
    dict(year=1835, president="Andrew Jackson", party="Democratic",
         opening="The railroad is changing the commerce of every State."),
    dict(year=1918, president="Woodrow Wilson", party="Democratic",
         opening="The great war in Europe has reached its final months."),
    dict(year=1962, president="John F. Kennedy", party="Democratic",
         opening="Our nation is now engaged in a race to reach the moon."),
    dict(year=2020, president="Donald J. Trump", party="Republican",
         opening="Artificial intelligence will transform the American economy."),
]


def new_prompt_text(p: dict) -> str:
    return f"{p['year']}, {p['president']} ({p['party']}):\n{p['opening']}"


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean NLL), guarded: a huge mean gives inf, not an OverflowError."""
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
    """Per-example summed NLL of the learned tokens, and their counts.

    Summing per example (not averaging per batch) makes the split's
    perplexity independent of batch size and padding.

    Only the work the answer needs is done: samples are batched longest
    first (little padding), the LM head and softmax run only at labelled
    positions (as in training, `train.label_only_loss`), and 8-bit layers
    are de-quantized once per call. The result is the same as scoring full
    logits in corpus order (a test checks it); a model without the usual
    decoder/head split takes that plain path.
    """
    parts = T.backbone_and_head(model)
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
            h, t, row = T.labelled_hidden(backbone, batch)
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
    """Percentile CI of token-weighted perplexity, resampling examples."""
    rng = np.random.default_rng(seed)
    n = len(sums)
    idx = rng.integers(0, n, size=(n_boot, n))
    ppl = np.exp(np.minimum(sums[idx].sum(1) / counts[idx].sum(1), 700))
    lo, hi = np.quantile(ppl, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def score_split(model, dataset, collator, cfg: Config, seed: int = 0) -> dict:
    """Base and fine-tuned perplexity with 95% CIs on the same tokens."""
    out = {}
    with model.disable_adapter():
        base = response_nll(model, dataset, collator, cfg.eval_batch_size)
    tuned = response_nll(model, dataset, collator, cfg.eval_batch_size)
    for name, (s, c) in (("base", base), ("finetuned", tuned)):
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


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
             do_sample: bool = False, seed: int = 0, temperature: float = 0.8,
             top_p: float = 0.95, batch_size: int = 64) -> list[dict]:
    """Batched generation with the KV cache; stops at EOS.

    8-bit layers are de-quantized once per call, not once per new token
    (`int8cpu.dequantized_for_inference`), and prompts go in batches of 64:
    on a 2-core CPU a decoding step of 64 rows costs little more than one
    of 16 (47 against 31 generated tokens/s, measured for 64 test prompts).

    Prompts are left-padded so every sequence's next token sits at the same
    position. Returns text, whether the model stopped by itself, and the
    number of generated tokens.
    """
    model.eval()
    kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p,
                  top_k=0) if do_sample else dict(do_sample=False)
    results = []
    with dequantized_for_inference(model):
        for i in range(0, len(prompts), batch_size):
            chunk = [P.prompt_ids(p, tokenizer)
                     for p in prompts[i:i + batch_size]]
            width = max(map(len, chunk))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c
                                for c in chunk], device=M.device())
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c)
                                 for c in chunk], device=M.device())
            torch.manual_seed(seed + i)
            out = model.generate(
                input_ids=ids, attention_mask=mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, use_cache=True, **kwargs)
            for row in out[:, width:].tolist():
                stopped = tokenizer.eos_token_id in row
                row = row[:row.index(tokenizer.eos_token_id)] if stopped else [
                    t for t in row if t != tokenizer.pad_token_id]
                results.append(dict(text=tokenizer.decode(
                    row, skip_special_tokens=True).strip(),
                    stopped=stopped, n_tokens=len(row) + int(stopped)))
    return results


def _gen_pair(model, tokenizer, prompts, cfg, **kw):
    """Base (adapter off) and fine-tuned generations of the same prompts."""
    t0 = time.time()
    with model.disable_adapter():
        base = generate(model, tokenizer, prompts,
                        max_new_tokens=cfg.gen_max_new_tokens, **kw)
    tuned = generate(model, tokenizer, prompts,
                     max_new_tokens=cfg.gen_max_new_tokens, **kw)
    n_tok = sum(g["n_tokens"] for g in base + tuned)
    return base, tuned, n_tok / (time.time() - t0)


GEN_SETTINGS = dict(greedy=dict(do_sample=False),
                    sampled=dict(do_sample=True, temperature=0.8, top_p=0.95,
                                 seed=1234))


def evaluate_run(cfg: Config, run: T.Run | None = None, *,
                 verbose: bool = True, force: bool = False) -> dict:
    """Everything chapter 5 shows; cached in the run directory."""
    run = run or T.load_run(T.run_dir(cfg))
    eval_path = run.path / "eval.json"
    if not force and eval_path.is_file():
        cached = T.read_json(eval_path)
        if cached.get("config_hash") == cfg.hash():
            if verbose:
                print(f"Reusing the evaluation in {eval_path}")
            return cached
    t_start = time.time()
    tokenizer = M.load_tokenizer(cfg)
    splits, _, enc = T.prepare_data(cfg, tokenizer)
    saved = T.read_json(run.path / "split.json")
    if saved != {k: [s["id"] for s in v] for k, v in splits.items()}:
        raise LorabookError(
            f"the data no longer gives the split this run was trained on "
            f"({run.path / 'split.json'}); retrain with `lorabook train`")
    model = M.load_trained_model(cfg, run.adapter_dir)
    collator = P.Collator(tokenizer)

    if verbose:
        print("Scoring test and validation perplexity ...", flush=True)
    result = dict(config_hash=cfg.hash())
    result["test"] = score_split(model, enc.splits["test"], collator, cfg)
    result["validation"] = score_split(model, enc.splits["validation"],
                                       collator, cfg)

    # A seeded sample of test prompts, with their real continuations: all
    # are scored against their references (greedy), and a few of them are
    # shown in the book next to the new prompts, greedy and sampled.
    # Generation is the slow part of evaluation on a CPU, so the greedy
    # generations of the shown prompts are those of the scored ones, and
    # the scored and new prompts decode together in one batch.
    rng = np.random.default_rng(cfg.seed)
    test = splits["test"]
    n_metric = min(cfg.n_metric_prompts, len(test))
    scored = [test[i] for i in sorted(rng.choice(len(test), n_metric, replace=False))]
    n_show = min(cfg.n_generation_prompts, n_metric)
    show_at = sorted(rng.choice(n_metric, n_show, replace=False))
    shown = [scored[i] for i in show_at]
    new_prompts = [new_prompt_text(p) for p in NEW_PROMPTS]
    refs = [s["response"] for s in scored]
    if verbose:
        print(f"Generating for {n_metric} test prompts and "
              f"{len(new_prompts)} new ones (greedy) ...", flush=True)
    greedy = [s["prompt"] for s in scored] + new_prompts
    base_g, tuned_g, speed = _gen_pair(model, tokenizer, greedy, cfg,
                                       batch_size=len(greedy),
                                       **GEN_SETTINGS["greedy"])
    speeds = [speed]
    picked = list(show_at) + list(range(n_metric, len(greedy)))
    gens = dict(greedy=([base_g[i] for i in picked],
                        [tuned_g[i] for i in picked]))
    base_g, tuned_g = base_g[:n_metric], tuned_g[:n_metric]
    prompts = [s["prompt"] for s in shown] + new_prompts
    if verbose:
        print(f"Generating for the {len(prompts)} shown prompts (sampled) ...",
              flush=True)
    *gens["sampled"], speed = _gen_pair(model, tokenizer, prompts, cfg,
                                        **GEN_SETTINGS["sampled"])
    speeds.append(speed)
    records = []
    for setting in GEN_SETTINGS:
        base, tuned = gens[setting]
        for j, p in enumerate(prompts):
            src = shown[j] if j < n_show else None
            records.append(dict(
                setting=setting, source="test" if src else "new",
                id=src["id"] if src else f"new-{j - n_show}",
                year=src.get("year") if src else NEW_PROMPTS[j - n_show]["year"],
                prompt=p, reference=src["response"] if src else None,
                base=base[j]["text"], finetuned=tuned[j]["text"],
                base_stopped=base[j]["stopped"],
                finetuned_stopped=tuned[j]["stopped"]))
    with open(run.path / "generations.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    index = X.build_overlap_index([s["response"] for s in splits["train"]])
    result["generation"] = dict(
        settings=dict(max_new_tokens=cfg.gen_max_new_tokens,
                      greedy=GEN_SETTINGS["greedy"],
                      sampled=GEN_SETTINGS["sampled"]),
        n_prompts=n_metric,
        tokens_per_s=float(np.mean(speeds)))
    for name, gens in (("base", base_g), ("finetuned", tuned_g)):
        texts = [g["text"] for g in gens]
        m = X.summarize_generations(texts, refs, index)
        m["stop_rate"] = float(np.mean([g["stopped"] for g in gens]))
        result["generation"][name] = m
    ref_m = X.summarize_generations(refs, refs, index)
    result["generation"]["reference"] = {
        k: ref_m[k] for k in ("distinct_1", "distinct_2",
                              "repeated_3gram_rate", "mean_words")}

    # Style control: does the text sound like the requested period?
    if "year" in splits["train"][0]:
        # The judge learns from every passage of the addresses outside the
        # evaluated splits (not only the training subset): it is a better
        # judge that way, and it has never seen a validation or test address.
        from lorabook import data as D
        held_out = {s["group"] for k in ("validation", "test") for s in splits[k]}
        pool = [s for s in D.load_samples(
            cfg.resolve(cfg.data_path), group_column=cfg.group_column,
            min_samples=1) if s["group"] not in held_out]
        clf = X.train_era_classifier([s["response"] for s in pool],
                                     [s["year"] for s in pool], seed=cfg.seed)
        years = [s["year"] for s in scored]
        result["style"] = dict(
            period_years=25,
            ceiling=X.era_accuracy(clf, refs, years),
            base=X.era_accuracy(clf, [g["text"] for g in base_g], years),
            finetuned=X.era_accuracy(clf, [g["text"] for g in tuned_g], years),
            majority=max(np.unique([X.period_of(y) for y in years],
                                   return_counts=True)[1]) / len(years))
    result["eval_runtime_s"] = time.time() - t_start

    # Flat keys in the run's metrics.json, as the CLI and book quote them.
    flat = dict(
        base_test_perplexity=result["test"]["base"]["perplexity"],
        finetuned_test_perplexity=result["test"]["finetuned"]["perplexity"],
        finetuned_test_perplexity_ci=[result["test"]["finetuned"]["ci_low"],
                                      result["test"]["finetuned"]["ci_high"]],
        base_test_perplexity_ci=[result["test"]["base"]["ci_low"],
                                 result["test"]["base"]["ci_high"]],
        test_response_tokens=result["test"]["tokens"],
        base_val_perplexity=result["validation"]["base"]["perplexity"],
        finetuned_val_perplexity=result["validation"]["finetuned"]["perplexity"],
        rouge_l=result["generation"]["finetuned"]["rouge_l"],
        bleu=result["generation"]["finetuned"]["bleu"],
        base_rouge_l=result["generation"]["base"]["rouge_l"],
        base_bleu=result["generation"]["base"]["bleu"],
        stop_rate=result["generation"]["finetuned"]["stop_rate"],
        base_stop_rate=result["generation"]["base"]["stop_rate"],
    )
    if "style" in result:
        flat["style_accuracy"] = result["style"]["finetuned"]
        flat["base_style_accuracy"] = result["style"]["base"]
        flat["style_ceiling"] = result["style"]["ceiling"]
    result["summary"] = flat
    metrics = dict(run.metrics, **flat)
    T._write_json(run.path / "metrics.json", metrics)
    T._write_json(eval_path, result)
    return result


def load_generations(run_path) -> list[dict]:
    with open(Path(run_path) / "generations.jsonl") as f:
        return [json.loads(line) for line in f]


def quantization_cost(cfg: Config, dataset, tokenizer) -> list[dict]:
    """Base model size and validation perplexity, full precision vs 8-bit."""
    rows = []
    collator = P.Collator(tokenizer)
    for quantize, backend, name in (
            (False, None, "fp32"), (True, "bitsandbytes", "8-bit, bitsandbytes"),
            (True, "int8cpu", "8-bit, lorabook Int8Linear")):
        model = M.load_base_model(cfg, quantize=quantize, backend=backend)
        sums, counts = response_nll(model, dataset, collator, cfg.eval_batch_size)
        size = M.model_summary(model)
        linear_mb = sum(
            p.numel() * p.element_size() for n, p in model.named_parameters()
            if n.endswith(".weight") and p.ndim == 2 and "embed" not in n
            and "lm_head" not in n) / 2**20
        rows.append(dict(
            weights=name,
            size_mb=size["size_mb"], linear_layers_mb=linear_mb,
            val_perplexity=perplexity(sums.sum(), counts.sum())))
        del model
    return rows
