"""Pitfalls (the book's first appendix): known mistakes, each run the wrong
way and lorabook's way.

Every function here reproduces one mistake that users of the popular
fine-tuning tools report next to what lorabook does instead, on real
samples, and returns numbers a chapter can put in a table. The appendix
`book/A1_pitfalls.md` calls those of 1-3 and 6 (4, 5 and the trained
leakage comparison are kept for reruns and tests); `tests/test_pitfalls.py`
checks that the wrong way really is wrong and the right way right.

1. a prompt/response boundary found by searching for a response template
   (`template_search_encode`, `boundary_comparison`);
2. pad == EOS and labels masked by id (`eos_label_counts`), and what a
   model trained on such labels does (`eos_training_comparison`);
3. perplexity averaged per batch, over padding or per sample
   (`perplexity_variants`);
4. word- and byte-level perplexity next to token-level
   (`normalised_perplexity`);
5. `label_names` and the eval loss of a PEFT model (`label_names_demo`);
6. a split by passage instead of by address (in `lorabook.book.leakage`).

The trained comparisons train with `loop.train_lora_slice`; their sizes
come from `loop.trained_demo_sizes`.
"""
from __future__ import annotations

import copy
import math
import tempfile
import time

import numpy as np
import torch

from lorabook import evaluate as E
from lorabook import generation as G
from lorabook import model as M
from lorabook import preprocess as P
from lorabook.book import loop as L
from lorabook.config import Config

# --------------------------------------------------------------------------
# 1. Response-template search
# --------------------------------------------------------------------------

ALPACA = "### Instruction:\n{prompt}\n\n### Response: {response}"

# (name, how the full text is laid out, the response template searched for)
TEMPLATE_CASES = (
    ("ChatML, template ‘<|im_start|>assistant\\n’", "chatml",
     "<|im_start|>assistant\n"),
    ("Alpaca-style, template ‘### Response:’", "alpaca", "### Response:"),
    ("Alpaca-style, template ‘### Response: ’ (with a trailing space)", "alpaca",
     "### Response: "),
)


def full_text(prompt: str, response: str, tokenizer, layout: str) -> str:
    """The whole training text (prompt and response) of one sample."""
    if layout == "chatml":
        return P.format_prompt(prompt, tokenizer) + response
    if layout == "alpaca":
        return ALPACA.format(prompt=prompt, response=response)
    raise ValueError(f"unknown layout {layout!r}")


def find_sublist(seq: list[int], sub: list[int]) -> int:
    """Start of the last occurrence of `sub` in `seq`, or -1."""
    n = len(sub)
    for i in range(len(seq) - n, -1, -1):
        if seq[i:i + n] == sub:
            return i
    return -1


# Adapted from trl's DataCollatorForCompletionOnlyLM (torch_call): the same
# idea (tokenize the whole text, search the template's token ids, mask up
# to its end, mask everything if it is not found), on one example.
def template_search_encode(text: str, template: str, tokenizer,
                           max_length: int) -> dict:
    """The popular tools' labels: mask everything up to the template.

    The text is tokenized whole; the template is tokenized alone. If its
    ids do not occur in the text's ids every label becomes -100.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids + [tokenizer.eos_token_id])[:max_length]
    tpl = tokenizer(template, add_special_tokens=False)["input_ids"]
    start = find_sublist(ids, tpl)
    if start < 0:
        labels = [-100] * len(ids)
    else:
        cut = start + len(tpl)
        labels = [-100] * cut + ids[cut:]
    return dict(input_ids=ids, attention_mask=[1] * len(ids), labels=labels,
                found=start >= 0)


def template_search_dataset(samples: list[dict], tokenizer, layout: str,
                            template: str, max_length: int):
    """A `datasets.Dataset` encoded by template search (the wrong way)."""
    from datasets import Dataset
    rows = [template_search_encode(
        full_text(s["prompt"], s["response"], tokenizer, layout), template,
        tokenizer, max_length) for s in samples]
    return Dataset.from_list(rows)


def boundary_comparison(samples: list[dict], tokenizer,
                        max_length: int) -> list[dict]:
    """Learned tokens per method: template search vs separate tokenization.

    `response_tokens` counts the tokens of the responses and their EOS
    that fit in `max_length` (what lorabook learns); a method that keeps
    them all has `kept_share` 1.
    """
    ours = [P.encode(s["prompt"], s["response"], tokenizer, max_length)
            for s in samples]
    ours = [e for e in ours if e is not None]
    n_resp = sum(sum(l != -100 for l in e["labels"]) for e in ours)
    rows = [dict(method="mine: prompt and response tokenized separately",
                 examples=len(ours), template_found=len(ours),
                 fully_masked=0, learned_tokens=n_resp,
                 kept_share=1.0,
                 learned_share=n_resp / sum(len(e["labels"]) for e in ours))]
    for name, layout, template in TEMPLATE_CASES:
        encs = [template_search_encode(
            full_text(s["prompt"], s["response"], tokenizer, layout),
            template, tokenizer, max_length) for s in samples]
        learned = sum(sum(l != -100 for l in e["labels"]) for e in encs)
        rows.append(dict(
            method=f"template search: {name}", examples=len(encs),
            template_found=sum(e["found"] for e in encs),
            fully_masked=sum(all(l == -100 for l in e["labels"])
                             for e in encs),
            learned_tokens=learned, kept_share=learned / n_resp,
            learned_share=learned / sum(len(e["labels"]) for e in encs)))
    return rows


def token_view(text: str, tokenizer) -> list[str]:
    """The tokens of a text, printable (for showing why a search fails)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [repr(tokenizer.decode([i]))[1:-1] for i in ids]


@torch.no_grad()
def batch_loss(model, dataset, collator, n: int = 8) -> float:
    """The model's own (mean) loss on the first n examples, as one batch."""
    model.eval()
    feats = [{k: dataset[i][k] for k in ("input_ids", "attention_mask",
                                         "labels")}
             for i in range(min(n, len(dataset)))]
    batch = {k: v.to(M.device()) for k, v in collator(feats).items()}
    return float(model(**batch).loss)


# --------------------------------------------------------------------------
# 2. pad == EOS
# --------------------------------------------------------------------------

def pad_is_eos(tokenizer):
    """A copy of the tokenizer whose pad token is its EOS (as shipped)."""
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token
    return tok


class IdMaskingCollator:
    """The wrong collator: labels of padding masked by comparing ids.

    Like `DataCollatorForLanguageModeling`, it sets a label to -100 wherever
    `input_ids == pad_token_id`; if pad is EOS, every EOS goes with it.
    """

    def __init__(self, tokenizer, *args):
        self.collate = P.collator(tokenizer, *args)
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, features):
        batch = self.collate(features)
        batch["labels"][batch["input_ids"] == self.pad_id] = -100
        return batch


def eos_label_counts(dataset, tokenizer, batch_size: int = 16) -> list[dict]:
    """How many response-ending EOS tokens each collator leaves learnable.

    `dataset` is encoded by lorabook (prompt masked, EOS appended). Rows:
    lorabook's positional collator with lorabook's pad, and with pad = EOS;
    the id-masking collator with pad = EOS; and transformers'
    DataCollatorForLanguageModeling with pad = EOS.
    """
    from transformers import DataCollatorForLanguageModeling
    eos = tokenizer.eos_token_id
    feats = [{k: dataset[i][k] for k in ("input_ids", "attention_mask",
                                         "labels")}
             for i in range(len(dataset))]
    ending = sum(f["labels"][-1] == eos for f in feats)
    same = pad_is_eos(tokenizer)
    dclm = DataCollatorForLanguageModeling(same, mlm=False)
    cases = (
        ("DataCollatorForSeq2Seq (padding masked by position)",
         tokenizer.pad_token, P.collator(tokenizer), False),
        ("DataCollatorForSeq2Seq (padding masked by position)", same.pad_token,
         P.collator(same), False),
        ("padding masked where input_ids == pad_token_id", same.pad_token,
         IdMaskingCollator(same), False),
        ("DataCollatorForLanguageModeling(mlm=False)", same.pad_token,
         dclm, True),
    )
    rows = []
    for name, pad, collate, ids_only in cases:
        learned = 0
        for i in range(0, len(feats), batch_size):
            chunk = feats[i:i + batch_size]
            if ids_only:
                chunk = [{"input_ids": f["input_ids"]} for f in chunk]
            b = collate(chunk)
            lab, am = b["labels"], b["attention_mask"]
            # The response-ending EOS is the last real position of a row.
            last = am.sum(1) - 1
            end = lab[torch.arange(len(lab)), last]
            learned += int((end == eos).sum())
        rows.append(dict(collator=name, pad_token=pad,
                         eos_learned=learned, examples_ending_in_eos=ending))
    return rows


@torch.no_grad()
def eos_end_probability(model, dataset, collator, eos_token_id: int,
                        batch_size: int = 16, per_sample: bool = False):
    """Mean probability the model gives the EOS right after a reference
    response (teacher-forced), over the examples that end in EOS; with
    `per_sample`, the array of those probabilities, one per example."""
    probs = []
    for _, labels, logits in E.shifted_logits(model, dataset, collator,
                                               batch_size):
        for row, lab in zip(logits, labels):
            where = (lab == eos_token_id).nonzero()
            if len(where):
                t = int(where[-1])
                probs.append(float(torch.softmax(row[t], -1)[eos_token_id]))
    if per_sample:
        return np.array(probs, dtype=float)
    return float(np.mean(probs)) if probs else float("nan")


def paired_ratio_ci(a, b, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict:
    """Ratio of means mean(a) / mean(b) of paired per-sample values, with a
    percentile bootstrap CI (the same resampled samples for both), and the
    share of samples where a > b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-300)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return dict(ratio=float(a.mean() / max(b.mean(), 1e-300)),
                ci_low=float(lo), ci_high=float(hi), n=len(a),
                share_higher=float((a > b).mean()))


EOS_CASES = (
    ("pad = EOS, padding masked by id", True),
    ("mine: padding masked by position", False),
)


def eos_training_comparison(cfg: Config, train_ds, held_out: list[dict],
                            tokenizer, *, epochs: int = 1,
                            max_new_tokens: int | None = None,
                            gen_batch_size: int = 32,
                            with_base: bool = True,
                            generate: bool = True) -> list[dict]:
    """Train LoRA twice on `train_ds`, once with every EOS label masked.

    The wrong way is what a collator that masks padding by id does when
    pad = EOS (`IdMaskingCollator` with `pad_is_eos`); lorabook's way masks
    padding by position and keeps the EOS labels. Everything else is the
    same: data, order, seed, steps, LoRA initialisation. Each model then
    generates greedily (batched, KV cache) for the prompts of `held_out`,
    with lorabook's tokenizer, and is scored on the same samples'
    reference responses for the probability of the EOS after them.

    Returns one row per model (the base first, with its adapter off, if
    `with_base`): EOS labels trained on, the share of generations that
    stopped by themselves, their mean length in new tokens (EOS counted),
    the mean EOS probability after the reference (and, per sample,
    `eos_probabilities`), and the seconds spent training and generating.
    `generate=False` skips the generations (their fields are then None):
    the teacher-forced EOS probability alone is cheap.
    """
    max_new_tokens = max_new_tokens or cfg.gen_max_new_tokens
    eos = tokenizer.eos_token_id
    prompts = [s["prompt"] for s in held_out]
    ref = P.tokenize_splits({"held_out": held_out}, tokenizer,
                            cfg).splits["held_out"]
    collator = P.collator(tokenizer)

    def measure(model, name, info):
        t0 = time.perf_counter()
        gens = G.generate(model, tokenizer, prompts,
                          max_new_tokens=max_new_tokens,
                          batch_size=gen_batch_size) if generate else None
        gen_s = time.perf_counter() - t0
        p_eos = eos_end_probability(model, ref, collator, eos,
                                    per_sample=True)
        return dict(
            model=name, eos_labels_trained=info.get("eos_labels", 0),
            stop_share=float(np.mean([g["stopped"] for g in gens]))
            if gens else None,
            mean_new_tokens=float(np.mean([g["n_tokens"] for g in gens]))
            if gens else None,
            eos_probability=float(np.mean(p_eos)) if len(p_eos)
            else float("nan"),
            eos_probabilities=p_eos,
            prompts=len(prompts), max_new_tokens=max_new_tokens,
            train_steps=info.get("steps", 0),
            train_s=info.get("seconds", 0.0), generate_s=gen_s,
            generations=[g["text"] for g in gens] if gens else None)

    rows = []
    for name, wrong in EOS_CASES:
        train_collator = (IdMaskingCollator(pad_is_eos(tokenizer)) if wrong
                          else P.collator(tokenizer))
        model, info = L.train_lora_slice(cfg, train_ds, train_collator,
                                       epochs=epochs, eos_token_id=eos)
        if with_base and not rows:
            with model.disable_adapter():     # fresh LoRA is B = 0 anyway
                rows.append(measure(model, "base (no fine-tuning)", {}))
        rows.append(measure(model, name, info))
        del model
    return rows


# --------------------------------------------------------------------------
# 3. and 4. Perplexity: batching, padding, per-sample means, normalisation
# --------------------------------------------------------------------------

def _token_nll(model, dataset, collator, batch_size: int):
    """Per batch: NLL at every shifted position, the learned-token mask
    and the padding mask (padding labelled with the pad id)."""
    out = []
    for b, labels, logits in E.shifted_logits(model, dataset, collator,
                                               batch_size):
        pad = b["attention_mask"][:, 1:] == 0
        # The wrong way's labels: padding not masked, so scored as pad ids.
        target = torch.where(pad, b["input_ids"][:, 1:], labels)
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        out.append(dict(nll=nll.double().cpu(),
                        learned=(labels != -100).cpu(),
                        pad=pad.cpu(), target=target.cpu()))
    return out


def perplexity_variants(model, dataset, collator,
                        batch_sizes=(1, 4, 16)) -> list[dict]:
    """Perplexity of one model on one dataset, four ways, per batch size.

    token_weighted: exp(sum of NLL / number of learned tokens) (lorabook);
    mean_of_batch_means: exp(mean over batches of each batch's mean loss);
    padding_scored: token-weighted, but padding positions count as targets;
    mean_of_sample_ppl: mean over samples of each sample's perplexity.
    """
    rows = []
    for bs in batch_sizes:
        tot = cnt = tot_pad = cnt_pad = 0.0
        batch_means, sample_ppl = [], []
        for b in _token_nll(model, dataset, collator, bs):
            nll, learned, pad = b["nll"], b["learned"], b["pad"]
            s = (nll * learned).sum(1)
            c = learned.sum(1)
            tot += float(s.sum())
            cnt += float(c.sum())
            batch_means.append(float(s.sum() / c.sum()))
            sample_ppl.extend(torch.exp(s / c).tolist())
            scored = learned | pad
            tot_pad += float((nll * scored).sum())
            cnt_pad += float(scored.sum())
        rows.append(dict(
            batch_size=bs,
            token_weighted=math.exp(tot / cnt),
            mean_of_batch_means=math.exp(float(np.mean(batch_means))),
            padding_scored=math.exp(tot_pad / cnt_pad),
            mean_of_sample_ppl=float(np.mean(sample_ppl)),
            padding_tokens=int(cnt_pad - cnt)))
    return rows


def normalised_perplexity(model, dataset, tokenizer, collator,
                          batch_size: int = 16) -> dict:
    """Token-, word- and byte-level perplexity of the responses.

    As lm-evaluation-harness does: total NLL of the text divided by its
    tokens, its words (whitespace-separated) or its UTF-8 bytes, and bits
    per byte = total NLL / bytes / ln 2. The EOS is left out (it is no
    part of the text); a truncated response counts only its kept part.
    """
    eos = tokenizer.eos_token_id
    total = 0.0
    n_tokens = n_words = n_bytes = 0
    for b in _token_nll(model, dataset, collator, batch_size):
        keep = b["learned"] & (b["target"] != eos)
        total += float((b["nll"] * keep).sum())
        n_tokens += int(keep.sum())
        for row, k in zip(b["target"], keep):
            text = tokenizer.decode(row[k].tolist())
            n_words += len(text.split())
            n_bytes += len(text.encode("utf-8"))
    return dict(nll=total, tokens=n_tokens, words=n_words, bytes=n_bytes,
                token_perplexity=math.exp(total / n_tokens),
                word_perplexity=math.exp(total / n_words),
                byte_perplexity=math.exp(total / n_bytes),
                bits_per_byte=total / n_bytes / math.log(2))


# --------------------------------------------------------------------------
# 5. label_names and the eval loss of a PEFT model
# --------------------------------------------------------------------------

LABEL_NAME_CASES = (
    ("not set (default)", None),
    ("label_names=['labels']", ["labels"]),
    ("label_names=[] (what find_labels gives for a bare PeftModel)", []),
)


def label_names_demo(model, dataset, collator,
                     batch_size: int = 8) -> list[dict]:
    """`Trainer.evaluate()` on a PEFT model with and without label_names.

    Returns per case the label names the Trainer settled on and the
    eval_loss it reported (None if it reported none).
    """
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils.generic import find_labels
    ds = dataset.select_columns(["input_ids", "attention_mask", "labels"])
    rows = []
    for name, names in LABEL_NAME_CASES:
        kw = {} if names is None else dict(label_names=names)
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(
                output_dir=tmp, per_device_eval_batch_size=batch_size,
                report_to="none", disable_tqdm=True,
                use_cpu=not torch.cuda.is_available(), **kw)
            trainer = Trainer(model=model, args=args, eval_dataset=ds,
                              data_collator=collator)
            trainer.remove_callback(PrinterCallback)   # no metrics dump
            result = trainer.evaluate()
        rows.append(dict(label_names=name,
                         trainer_label_names=str(trainer.label_names),
                         eval_loss=result.get("eval_loss"),
                         reported=sorted(k for k in result
                                         if k.endswith("loss"))))
    rows.append(dict(peft_class=type(model).__name__,
                     found_on_wrapper=find_labels(type(model))))
    return rows
