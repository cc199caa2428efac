"""A split by passage instead of by address (the pitfalls appendix).

Passages of one address share names, events and phrasing; a split by
passage puts other passages of the test addresses into training. These
functions measure how much more such a test set shares with its training
set than one split by address, and (`leakage_training_comparison`) what
that does to a trained model's test perplexity.
"""
from __future__ import annotations

import random

import numpy as np

from lorabook import evaluate as E
from lorabook import metrics as X
from lorabook import preprocess as P
from lorabook.book import loop as L
from lorabook.config import Config, LorabookError



def passage_vs_address_split(samples: list[dict], *, seed: int,
                             n_test: int, n_train: int,
                             test_fraction: float = 0.1,
                             n_test_groups: int | None = None,
                             n_groups: int | None = None) -> dict:
    """Two training sets for one fixed test set.

    The test set is `n_test` passages of a seeded share of addresses
    (`test_fraction`, or exactly `n_test_groups` addresses). The address
    split trains on passages of the other addresses only; the passage split
    draws its training passages from all remaining passages, so it also
    holds other passages of the test addresses (leakage).

    `n_groups` restricts the corpus to a seeded subset of that many
    addresses (the test addresses among them), as if the corpus held only
    those: a small training set then holds the test addresses in the share
    a passage split of such a corpus would give them.
    """
    groups = sorted({s["group"] for s in samples})
    rng = random.Random(seed)
    rng.shuffle(groups)
    if n_groups is not None:
        groups = groups[:n_groups]
        kept = set(groups)
        samples = [s for s in samples if s["group"] in kept]
    n_tg = (n_test_groups if n_test_groups is not None
            else max(1, round(test_fraction * len(groups))))
    if not 1 <= n_tg < len(groups):
        raise LorabookError(f"need 1 to {len(groups) - 1} test addresses, "
                            f"got {n_tg}")
    test_groups = set(groups[:n_tg])
    in_test = [s for s in samples if s["group"] in test_groups]
    test = rng.sample(in_test, min(n_test, len(in_test)))
    test_ids = {s["id"] for s in test}
    rest = [s for s in samples if s["id"] not in test_ids]
    by_address = [s for s in rest if s["group"] not in test_groups]
    if len(by_address) < n_train:
        raise LorabookError(
            f"only {len(by_address)} passages outside the test addresses "
            f"for n_train={n_train}; use more addresses or fewer samples")
    # The passage split has the test addresses in the same share as they
    # have in the corpus, as a random passage-level split would.
    return dict(test=test,
                address=rng.sample(by_address, n_train),
                passage=rng.sample(rest, n_train),
                test_groups=sorted(test_groups))


def overlap_stats(test: list[dict], train: list[dict], n: int = 3) -> dict:
    """What a test set shares with a training set, in words.

    Mean and max longest run of words a test response shares with any
    training response, and the share of the test responses' word n-grams
    (and word types) that occur in the training responses.
    """
    index = X.build_overlap_index([s["response"] for s in train])
    runs = [X.longest_overlap(s["response"], index) for s in test]
    train_ngrams, train_vocab = set(), set()
    for s in train:
        w = X.words(s["response"])
        train_vocab.update(w)
        train_ngrams.update(zip(*(w[i:] for i in range(n))))
    seen = total = seen_types = n_types = 0
    for s in test:
        w = X.words(s["response"])
        grams = list(zip(*(w[i:] for i in range(n))))
        seen += sum(g in train_ngrams for g in grams)
        total += len(grams)
        types = set(w)
        seen_types += len(types & train_vocab)
        n_types += len(types)
    return dict(mean_longest_run=float(np.mean(runs)),
                max_longest_run=int(max(runs)),
                ngram_seen_share=seen / max(total, 1),
                word_types_seen_share=seen_types / max(n_types, 1),
                test_addresses_in_train=len(
                    {s["group"] for s in test} & {s["group"] for s in train}))


def split_leakage(samples: list[dict], *, seed: int, n_test: int = 200,
                  n_train: int = 1200, repeats: int = 5,
                  n_test_groups: int | None = None) -> list[dict]:
    """Overlap of one test set with an address-split and a passage-split
    training set, averaged over `repeats` seeded draws (each draw its own
    test set of `n_test` passages of `n_test_groups` addresses, default a
    tenth of them). Each row also keeps the per-draw values of every
    measure under `draws`."""
    rows = {}
    for r in range(repeats):
        sp = passage_vs_address_split(samples, seed=seed + r, n_test=n_test,
                                      n_train=n_train,
                                      n_test_groups=n_test_groups)
        for split in ("address", "passage"):
            st = overlap_stats(sp["test"], sp[split])
            same = {s["group"] for s in sp["test"]}
            st["train_from_test_addresses"] = sum(
                s["group"] in same for s in sp[split])
            st["test_addresses"] = len(sp["test_groups"])
            for k, v in st.items():
                rows.setdefault(split, {}).setdefault(k, []).append(v)
    return [dict(split=f"by {k}", **{m: float(np.mean(v))
                                      for m, v in d.items()},
                 draws={m: [float(x) for x in v] for m, v in d.items()})
            for k, d in rows.items()]


def leakage_training_comparison(cfg: Config, samples: list[dict], tokenizer,
                                *, n_train: int, n_test: int,
                                n_test_groups: int,
                                n_groups: int | None = None,
                                epochs: int = 1,
                                seed: int | None = None) -> dict:
    """Test perplexity after training on an address split and on a passage
    split of the same size, on one fixed set of test passages T.

    T is `n_test` passages of `n_test_groups` addresses, drawn from a
    seeded pool of `n_groups` addresses (all if None;
    `passage_vs_address_split`). The
    address split trains only on the pool's other addresses; the passage
    split on passages drawn at random from the whole pool except T, so it
    includes other passages of T's addresses. Same number of samples, same
    steps, same seed, same LoRA initialisation.

    Perplexity is token-weighted over the response tokens of T
    (`evaluate.response_nll`) with 95% bootstrap CIs over passages, for the
    base model and both trained models; `ratio` is the passage split's
    perplexity over the address split's with a paired bootstrap CI (the
    same resampled passages for both), and `p_passage_lower` the share of
    resamples in which the passage split scores lower.
    """
    seed = cfg.seed if seed is None else seed
    # Only samples that survive tokenization, so both splits keep n_train.
    samples = [s for s in samples
               if len(P.prompt_ids(s["prompt"], tokenizer)) < cfg.max_length]
    sp = passage_vs_address_split(samples, seed=seed, n_test=n_test,
                                  n_train=n_train,
                                  n_test_groups=n_test_groups,
                                  n_groups=n_groups)
    enc = P.tokenize_splits({k: sp[k] for k in ("test", "address", "passage")},
                            tokenizer, cfg).splits
    collator = P.collator(tokenizer, cfg.padding, cfg.max_length,
                          cfg.pad_to_multiple_of)
    score_collator = P.collator(tokenizer)
    test_groups = set(sp["test_groups"])
    nll, rows = {}, []

    def score(model, name, info, train=None):
        sums, counts = E.response_nll(model, enc["test"], score_collator,
                                      cfg.eval_batch_size)
        nll[name] = (sums, counts)
        lo, hi = E.bootstrap_ci(sums, counts, cfg.bootstrap_samples, seed)
        row = dict(model=name,
                   perplexity=E.perplexity(sums.sum(), counts.sum()),
                   ci_low=lo, ci_high=hi,
                   train_samples=len(train) if train else 0,
                   train_from_test_addresses=sum(
                       s["group"] in test_groups for s in train or []),
                   train_steps=info.get("steps", 0),
                   train_s=info.get("seconds", 0.0))
        if train:
            row.update(overlap_stats(sp["test"], train))
        rows.append(row)

    for split in ("address", "passage"):
        model, info = L.train_lora_slice(cfg, enc[split], collator,
                                       epochs=epochs, seed=seed)
        if not rows:
            with model.disable_adapter():
                score(model, "base", {})
        score(model, f"{split} split", info, sp[split])
        del model

    (sa, ca), (sp_, cp) = nll["address split"], nll["passage split"]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sa), size=(cfg.bootstrap_samples, len(sa)))
    ratios = np.exp(sp_[idx].sum(1) / cp[idx].sum(1)
                    - sa[idx].sum(1) / ca[idx].sum(1))
    by = {r["model"]: r for r in rows}
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return dict(
        rows=rows, ratio=by["passage split"]["perplexity"]
        / by["address split"]["perplexity"],
        ratio_ci=(float(lo), float(hi)),
        p_passage_lower=float((ratios < 1).mean()),
        test_passages=len(sp["test"]), test_tokens=int(ca.sum()),
        test_groups=sp["test_groups"], n_groups=n_groups,
        test_per_group={g: sum(s["group"] == g for s in sp["test"])
                        for g in sp["test_groups"]})
