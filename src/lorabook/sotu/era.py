"""The era judge of chapter 5: does a continuation read like its period?"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lorabook import metrics as X
from lorabook.config import Config, LorabookError

# --- style control: which era does a text sound like? ---------------------

# Three eras of the addresses, cut at two turning points of American
# government: the Civil War (1861) and the New Deal (1933). On real test
# passages a classifier of these eras is right far more often than always
# guessing the commonest one; on quarter-centuries it was not (chapter 5).
ERA_BOUNDS = (1861, 1933)


def period_of(year: int, period: int = 25) -> str:
    """Label of the `period`-year bin holding `year`: 1790 -> "1775–1799"."""
    if period < 1:
        raise LorabookError(f"period must be >= 1 year, got {period}")
    start = (int(year) // period) * period
    return f"{start}\u2013{start + period - 1}"


def era_of(year: int, bounds: Sequence[int] = ERA_BOUNDS) -> str:
    """Label of the era holding `year`; eras start at each bound.

    era_of(1850) -> "before 1861", era_of(1900) -> "1861\u20131932",
    era_of(1990) -> "1933 on".
    """
    bounds = sorted(bounds)
    if not bounds:
        raise LorabookError("era bounds must hold at least one year")
    y = int(year)
    if y < bounds[0]:
        return f"before {bounds[0]}"
    for lo, hi in zip(bounds, bounds[1:]):
        if y < hi:
            return f"{lo}\u2013{hi - 1}"
    return f"{bounds[-1]} on"


def _labeller(period: int | None, bounds):
    if period is not None:
        return lambda y: period_of(y, period)
    return lambda y: era_of(y, bounds)


def train_era_classifier(texts: Sequence[str], years: Sequence[int],
                         period: int | None = None,
                         bounds: Sequence[int] = ERA_BOUNDS, seed: int = 0):
    """Fit TF-IDF (word 1–2 grams) + logistic regression on era labels.

    Used as an automatic judge of style: a generation prompted with a year
    should be classified into that year's era. The labels are the eras of
    `bounds` (`era_of`), or `period`-year bins when `period` is given.
    Returns a fitted scikit-learn Pipeline; its `label` attribute maps a
    year to its label.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    X._check_pair(texts, years)
    label = _labeller(period, bounds)
    labels = [label(y) for y in years]
    if len(set(labels)) < 2:
        raise LorabookError(
            f"the era classifier needs texts from at least 2 eras, but all "
            f"{len(labels)} fall in {labels[0]}; use more varied years or "
            f"other era bounds")
    clf = Pipeline([
        ("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
                                  min_df=2)),
        # newton-cg reaches the same (convex) optimum as the default lbfgs
        # in a handful of iterations: ~0.4 s instead of 3-6 s on 1,200 SOTU
        # passages on a busy 2-core machine.
        ("logreg", LogisticRegression(max_iter=2000, solver="newton-cg",
                                      random_state=seed)),
    ])
    try:
        clf.fit([t or "" for t in texts], labels)
    except ValueError as exc:   # e.g. no word occurs in two texts
        raise LorabookError(
            f"could not fit the era classifier on {len(labels)} texts "
            f"({exc}); it needs more (and non-empty) texts") from exc
    clf.label = label
    clf.period = period
    return clf


def era_predict(clf, texts: Sequence[str]) -> list[str]:
    """Predicted era label for each text."""
    X._check_texts(texts)
    return list(clf.predict([t or "" for t in texts]))


def _truth(clf, years):
    label = getattr(clf, "label", None) or _labeller(
        getattr(clf, "period", 25), ERA_BOUNDS)
    return [label(y) for y in years]


def era_accuracy(clf, texts: Sequence[str], years: Sequence[int]) -> float:
    """Share of texts classified into the era of their year."""
    X._check_pair(texts, years)
    truth = _truth(clf, years)
    pred = era_predict(clf, texts)
    return float(np.mean([p == t for p, t in zip(pred, truth)]))


def era_balanced_accuracy(clf, texts: Sequence[str],
                          years: Sequence[int]) -> float:
    """Mean over the true eras present of the share classified right.

    Unlike plain accuracy it does not reward always answering the
    commonest era: that strategy scores 1 / (number of eras present).
    """
    X._check_pair(texts, years)
    truth = _truth(clf, years)
    pred = era_predict(clf, texts)
    return balanced_accuracy(truth, pred)


def balanced_accuracy(truth: Sequence, pred: Sequence) -> float:
    """Mean per-class recall over the classes present in `truth`."""
    X._check_pair(list(map(str, pred)), list(map(str, truth)))
    recalls = []
    for c in sorted(set(truth)):
        idx = [i for i, t in enumerate(truth) if t == c]
        recalls.append(np.mean([pred[i] == c for i in idx]))
    return float(np.mean(recalls))


def majority_accuracy(labels: Sequence) -> float:
    """Accuracy of always guessing the commonest label (the floor)."""
    if len(labels) == 0:
        raise LorabookError("nothing to score: the label list is empty")
    _, counts = np.unique(list(labels), return_counts=True)
    return float(counts.max() / len(labels))



def era_judge(cfg: Config, splits: dict, all_samples, scored: list[dict],
              texts: dict) -> dict:
    """Fit the era classifier and score real and generated continuations.

    It learns from every passage of the addresses outside the validation
    and test splits (`judge_pool`; `splits` should be the whole splits,
    not their subsets), so it has never seen an evaluated address. Eras:
    `ERA_BOUNDS`. With "finetuned" and "base_instructed" among `texts`,
    the two comparisons that decide whether fine-tuning taught the era
    and the voice, with paired bootstrap intervals: balanced accuracy,
    and closeness of the "we/our/us" share to the real text's.
    """
    held_out = {s["group"] for k in ("validation", "test") for s in splits[k]}
    pool = judge_pool(all_samples, held_out)
    clf = train_era_classifier([s["response"] for s in pool],
                                 [s["year"] for s in pool], seed=cfg.seed)
    years = [s["year"] for s in scored]
    truth = [era_of(y) for y in years]
    counts = {e: truth.count(e) for e in sorted(set(truth),
                                                key=lambda e: years[truth.index(e)])}
    out = dict(bounds=list(ERA_BOUNDS), eras=counts,
               n_train=len(pool), majority=majority_accuracy(truth),
               chance=1 / len(counts))
    refs = [s["response"] for s in scored]
    # The finer judge first tried: quarter-centuries, on the real passages.
    q = train_era_classifier([s["response"] for s in pool],
                               [s["year"] for s in pool], period=25,
                               seed=cfg.seed)
    out["quarter_century"] = dict(
        accuracy=era_accuracy(q, refs, years),
        balanced=era_balanced_accuracy(q, refs, years),
        majority=majority_accuracy([period_of(y) for y in years]),
        chance=1 / len({period_of(y) for y in years}))
    preds = {}
    for name, t in dict(real=refs, **texts).items():
        preds[name] = era_predict(clf, t)
        out[name] = dict(accuracy=float(np.mean([p == e for p, e in
                                                 zip(preds[name], truth)])),
                         balanced=balanced_accuracy(truth, preds[name]),
                         recall={e: float(np.mean([p == e for p, t_ in
                                                   zip(preds[name], truth)
                                                   if t_ == e]))
                                 for e in counts})
    if "finetuned" in texts and "base_instructed" in texts:
        out["paired"] = dict(
            era=paired_era_difference(truth, preds["finetuned"],
                                      preds["base_instructed"],
                                      cfg.bootstrap_samples, cfg.seed),
            we=paired_share_gap([X.says_we(t) for t in refs],
                                [X.says_we(t) for t in texts["finetuned"]],
                                [X.says_we(t) for t in texts["base_instructed"]],
                                truth, cfg.bootstrap_samples, cfg.seed))
    return out


# --- comparisons that can tell a difference --------------------------------

def stratified_by_era(samples: Sequence[dict], per_era: int, seed: int,
                      bounds: Sequence[int] = ERA_BOUNDS) -> list[dict]:
    """A seeded draw of `per_era` samples from each era (all of an era that
    has fewer), returned in corpus order.

    Drawing evenly from each era gives every era enough prompts for its
    recall to mean something, where a plain draw from a split mostly of
    twentieth-century addresses leaves the earliest era a handful.
    """
    import random
    if per_era < 1:
        raise LorabookError(f"per_era must be >= 1, got {per_era}")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(era_of(s["year"], bounds), []).append(i)
    rng = random.Random(f"{seed}-era-draw")
    picked = []
    for era in sorted(groups):
        idx = groups[era]
        picked += idx if len(idx) <= per_era else rng.sample(idx, per_era)
    return [samples[i] for i in sorted(picked)]


def judge_pool(all_samples: Sequence[dict], held_out_groups) -> list[dict]:
    """The era judge's training passages: every passage of an address
    outside the held-out ones (validation and test)."""
    held = set(held_out_groups)
    return [s for s in all_samples if s["group"] not in held]


def _stratified_index(truth: Sequence[str], n_boot: int, seed: int):
    """Bootstrap resamples of prompt indices, drawn within each era so that
    every resample keeps the design's prompts per era."""
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(np.asarray(truth) == e) for e in sorted(set(truth))]
    return np.concatenate([s[rng.integers(0, len(s), size=(n_boot, len(s)))]
                           for s in strata], axis=1)


def paired_era_difference(truth: Sequence[str], pred_a: Sequence[str],
                          pred_b: Sequence[str], n_boot: int = 1000,
                          seed: int = 0, level: float = 0.95) -> dict:
    """Balanced accuracy of system a minus system b on the same prompts,
    with a paired bootstrap interval (prompts resampled within each era).
    """
    X._check_pair(list(pred_a), list(truth))
    X._check_pair(list(pred_b), list(truth))
    truth = np.asarray(truth)
    hit_a = np.asarray(pred_a) == truth
    hit_b = np.asarray(pred_b) == truth
    eras = sorted(set(truth.tolist()))

    def bal(hit, idx):
        t = truth[idx]
        return np.mean([hit[idx][t == e].mean() for e in eras])

    idx = _stratified_index(truth, n_boot, seed)
    diffs = np.array([bal(hit_a, r) - bal(hit_b, r) for r in idx])
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    everything = np.arange(len(truth))
    return dict(a=float(bal(hit_a, everything)), b=float(bal(hit_b, everything)),
                difference=float(bal(hit_a, everything) - bal(hit_b, everything)),
                ci_low=float(lo), ci_high=float(hi))


def paired_share_gap(real: Sequence[bool], a: Sequence[bool], b: Sequence[bool],
                     truth: Sequence[str], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """How much closer system a's share of flagged texts (say, texts that
    say "we") is to the real continuations' share than system b's:
    |share_b - share_real| - |share_a - share_real|, positive when a is
    closer, with a paired bootstrap interval (the same resampled prompts
    for the real text and both systems, within each era).
    """
    real, a, b = (np.asarray(x, dtype=float) for x in (real, a, b))
    if not (len(real) == len(a) == len(b) == len(truth)):
        raise LorabookError("paired_share_gap needs one flag per prompt for "
                            "the real text and both systems")
    idx = _stratified_index(truth, n_boot, seed)
    r, sa, sb = real[idx].mean(1), a[idx].mean(1), b[idx].mean(1)
    gaps = np.abs(sb - r) - np.abs(sa - r)
    lo, hi = np.quantile(gaps, [(1 - level) / 2, (1 + level) / 2])
    return dict(real=float(real.mean()), a=float(a.mean()), b=float(b.mean()),
                gap=float(abs(b.mean() - real.mean()) - abs(a.mean() - real.mean())),
                ci_low=float(lo), ci_high=float(hi))
