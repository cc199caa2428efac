"""The era judge of chapter 5: does a continuation read like its period?"""
from __future__ import annotations

from lorabook import metrics as X
from lorabook.config import Config

def era_judge(cfg: Config, splits: dict, all_samples, scored: list[dict],
              texts: dict) -> dict:
    """Fit the era classifier and score real and generated continuations.

    It learns from every passage of the addresses outside the validation
    and test splits (not only the training subset), so it has never seen
    an evaluated address. Eras: `metrics.ERA_BOUNDS`.
    """
    held_out = {s["group"] for k in ("validation", "test") for s in splits[k]}
    pool = [s for s in all_samples if s["group"] not in held_out]
    clf = X.train_era_classifier([s["response"] for s in pool],
                                 [s["year"] for s in pool], seed=cfg.seed)
    years = [s["year"] for s in scored]
    truth = [X.era_of(y) for y in years]
    counts = {e: truth.count(e) for e in sorted(set(truth),
                                                key=lambda e: years[truth.index(e)])}
    out = dict(bounds=list(X.ERA_BOUNDS), eras=counts,
               n_train=len(pool), majority=X.majority_accuracy(truth),
               chance=1 / len(counts))
    refs = [s["response"] for s in scored]
    # The finer judge first tried: quarter-centuries, on the real passages.
    q = X.train_era_classifier([s["response"] for s in pool],
                               [s["year"] for s in pool], period=25,
                               seed=cfg.seed)
    out["quarter_century"] = dict(
        accuracy=X.era_accuracy(q, refs, years),
        balanced=X.era_balanced_accuracy(q, refs, years),
        majority=X.majority_accuracy([X.period_of(y) for y in years]),
        chance=1 / len({X.period_of(y) for y in years}))
    for name, t in dict(real=refs, **texts).items():
        out[name] = dict(accuracy=X.era_accuracy(clf, t, years),
                         balanced=X.era_balanced_accuracy(clf, t, years))
    return out
