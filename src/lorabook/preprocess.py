"""Preprocessing stage (chapter 2): prompt format, tokens, labels, batches.

Each sample becomes `input_ids = prompt tokens + response tokens + EOS` and
`labels = -100 for every prompt token, the response tokens and EOS as they
are`. Prompt and response are tokenized separately and joined, so the
boundary between masked and learned tokens is exact by construction: no
search for a response template in the joined text, which is how popular
tools end up masking every token when the template tokenizes differently in
context. Padding is masked by position in the collator, never by comparing
ids with the pad id, so an EOS that shares its id with pad is still learned.
"""
from __future__ import annotations

from dataclasses import dataclass

from lorabook import data as D
from lorabook.config import Config, LorabookError


def format_prompt(prompt: str, tokenizer) -> str:
    """The text the model sees before its response.

    For ChatML models (SmolLM2) this is the chat template's own layout but
    without the default system turn the template would add (about 20
    tokens per sample, a sixth of the CPU budget). Models without a chat
    template get the prompt followed by a newline.
    """
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in template:
        return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    return f"{prompt}\n" if prompt else ""


def prompt_ids(prompt: str, tokenizer) -> list[int]:
    """Token ids of the formatted prompt, BOS handled explicitly.

    SmolLM2's tokenizer adds no BOS for us; its ChatML prompt already opens
    with `<|im_start|>`, its BOS. Other models get their BOS prepended when
    they have one distinct from EOS.
    """
    ids = tokenizer(format_prompt(prompt, tokenizer),
                    add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and bos != tokenizer.eos_token_id and ids[:1] != [bos]:
        ids = [bos] + ids
    return ids


def encode(prompt: str, response: str, tokenizer, max_length: int) -> dict | None:
    """One training example, or None if truncation would leave no response.

    Truncation cuts the response from the right; a cut response loses its
    EOS (teaching the model to stop mid-sentence would be wrong).
    """
    # Adapted from the assignment's prompt-masking example (labels[:prompt_len]
    # = -100): prompt and response tokenized separately and joined, EOS appended,
    # the response truncated from the right, a sample without room dropped.
    p = prompt_ids(prompt, tokenizer)
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    r = r + [tokenizer.eos_token_id]
    room = max_length - len(p)
    if room < 1:
        return None
    r = r[:room]
    return dict(input_ids=p + r, attention_mask=[1] * (len(p) + len(r)),
                labels=[-100] * len(p) + r)


@dataclass
class Encoded:
    """Tokenized splits plus what preprocessing dropped and kept."""
    splits: dict            # split name -> datasets.Dataset
    dropped: dict           # split name -> samples dropped as too long
    truncated: dict         # split name -> samples whose response was cut
    learned_share: dict     # split name -> learned tokens / all tokens


def tokenize_splits(splits: dict, tokenizer, cfg: Config) -> Encoded:
    """Encode every split; refuse data whose examples learn nothing."""
    from datasets import Dataset
    out, dropped, truncated, share = {}, {}, {}, {}
    for name, samples in splits.items():
        rows, n_drop, n_cut, learned, total = [], 0, 0, 0, 0
        for s in samples:
            ex = encode(s["prompt"], s["response"], tokenizer, cfg.max_length)
            if ex is None:
                n_drop += 1
                continue
            if ex["labels"][-1] != tokenizer.eos_token_id:
                n_cut += 1
            n_learned = sum(l != -100 for l in ex["labels"])
            if n_learned == 0:      # cannot happen by construction; guard
                raise LorabookError(f"sample {s['id']} has no learned token")
            learned += n_learned
            total += len(ex["labels"])
            rows.append(dict(ex, id=s["id"]))
        if not rows:
            raise LorabookError(
                f"every {name} sample is longer than max_length="
                f"{cfg.max_length} tokens in its prompt alone; raise "
                "max_length or shorten the prompts")
        out[name] = Dataset.from_list(rows)
        dropped[name], truncated[name] = n_drop, n_cut
        share[name] = learned / total
    return Encoded(out, dropped, truncated, share)


def check_learned_tokens(dataset) -> float:
    """Pitfall guard: every example keeps at least one learned token.

    Returns the share of learned tokens; raises if any example has none
    (the silent failure where a template mismatch masks everything).
    """
    learned = total = 0
    for i, labels in enumerate(dataset["labels"]):
        n = sum(l != -100 for l in labels)
        if n == 0:
            raise LorabookError(
                f"example {i} has no learned token (every label is -100): "
                "the prompt/response boundary masks the whole example")
        learned += n
        total += len(labels)
    return learned / total


def _check_padding(padding: str, max_length: int | None,
                   multiple_of: int | None) -> None:
    """An `error:` for a padding setting the collator cannot follow."""
    if padding not in ("longest", "max_length"):
        raise LorabookError(
            f"padding must be 'longest' or 'max_length', got {padding!r}")
    if padding == "max_length" and not max_length:
        raise LorabookError("padding='max_length' needs max_length")
    if multiple_of is not None and multiple_of < 1:
        raise LorabookError(f"multiple_of must be >= 1, got {multiple_of}")


def collator(tokenizer, padding: str = "longest", max_length: int | None = None,
             multiple_of: int | None = None):
    """Hugging Face's `DataCollatorForSeq2Seq`: right padding, labels
    padded with -100 by position (chapter 2)."""
    # Adapted from the transformers docs on DataCollatorForSeq2Seq (used as
    # a library, label_pad_token_id=-100): padding="longest" pads a batch to
    # its longest sample, rounded up to `multiple_of`; "max_length" pads to
    # max_length, as the assignment's recipe does.
    from transformers import DataCollatorForSeq2Seq
    _check_padding(padding, max_length, multiple_of)
    return DataCollatorForSeq2Seq(
        tokenizer, padding=padding,
        max_length=max_length if padding == "max_length" else None,
        pad_to_multiple_of=multiple_of if padding == "longest" else None,
        label_pad_token_id=-100, return_tensors="pt")


def make_collator(tokenizer, cfg: Config):
    """The training collator of a config (`collator` with its padding).

    A few batch widths (multiples of `pad_to_multiple_of`) instead of one
    per length keep PyTorch's per-shape kernel caches small.
    """
    return collator(tokenizer, cfg.padding, cfg.max_length,
                    cfg.pad_to_multiple_of)


def masking_table(example: dict, tokenizer):
    """Token-by-token view of one example as the model receives it (token
    id, attention mask, label): what is masked, what is learned."""
    import pandas as pd
    rows = []
    for pos, (tid, am, lab) in enumerate(zip(example["input_ids"],
                                             example["attention_mask"],
                                             example["labels"])):
        rows.append(dict(position=pos, token=repr(tokenizer.decode([tid]))[1:-1],
                         id=tid, attention_mask=am, label=lab,
                         role="learned" if lab != -100 else "masked"))
    return pd.DataFrame(rows)


def token_lengths(dataset) -> dict:
    """Prompt / response / total token counts per example (for plots)."""
    prompt, response = [], []
    for labels in dataset["labels"]:
        n_resp = sum(l != -100 for l in labels)
        prompt.append(len(labels) - n_resp)
        response.append(n_resp)
    return dict(prompt=prompt, response=response,
                total=[p + r for p, r in zip(prompt, response)])


def config_samples(cfg: Config, min_samples: int | None = None) -> list[dict]:
    """The config's dataset as `data.load_samples` reads it (its path,
    columns and group column), before cleaning."""
    return D.load_samples(
        cfg.resolve(cfg.data_path), text_column=cfg.text_column,
        prompt_column=cfg.prompt_column, response_column=cfg.response_column,
        group_column=cfg.group_column,
        min_samples=cfg.min_samples if min_samples is None else min_samples)


def full_splits(cfg: Config) -> dict:
    """The cleaned train/validation/test splits of a config before the
    seeded subsets (`n_train`, `n_val`, `n_test`) are drawn from them."""
    samples, _ = D.clean_samples(config_samples(cfg))
    return D.split_samples(samples, seed=cfg.seed,
                           val_fraction=cfg.val_fraction,
                           test_fraction=cfg.test_fraction)


def prepare_data(cfg: Config, tokenizer):
    """Load, clean, split and tokenize the data of a config.

    Returns (samples per split, cleaning report, Encoded splits).
    """
    samples, report = D.clean_samples(config_samples(cfg))
    splits = D.split_samples(
        samples, seed=cfg.seed, val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction, n_train=cfg.n_train,
        n_val=cfg.n_val, n_test=cfg.n_test)
    encoded = tokenize_splits(splits, tokenizer, cfg)
    for name, ds in encoded.splits.items():
        check_learned_tokens(ds)
    return splits, report, encoded
