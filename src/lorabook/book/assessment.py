"""Numbers and quotes in prose, for the chapters' computed sentences:
`fmt`, `pct`, `excerpt`, and the era judge's margin. The verdicts that use them
(chapter 3's recipe verdict, chapter 5's conclusion) are in book.verdicts
and re-exported here; tests/test_assessment.py renders them from numbers
that point each way and checks that the words follow.
"""
from __future__ import annotations

import math


# The era judge is used only if, on real passages, it beats both floors by
# this much (accuracy over always-the-commonest-era, balanced accuracy over
# chance).
JUDGE_MARGIN = 0.15


def fmt(x, digits: int = 3) -> str:
    """A number with at most `digits` significant digits, for prose."""
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return f"{x:,}"
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "infinite"
    mag = int(math.floor(math.log10(abs(x))))
    decimals = max(0, digits - 1 - mag)
    return f"{round(x, decimals):,.{decimals}f}"


def pct(x: float) -> str:
    """A share as a whole percentage: 0.4375 -> "44%"."""
    return f"{100 * x:.0f}%"


def pct_diff(a: float, b: float) -> str:
    """The difference of two shares in points, as the difference of their
    printed whole percentages (64% and 54% -> "+10 points"), so that the
    sentence's numbers add up."""
    return f"{round(100 * a) - round(100 * b):+d} points"


def drop_share(start: float, mid: float, end: float) -> str:
    """How much of the fall in perplexity from `start` to `end` the step
    to `mid` makes, on the perplexity scale and on the log scale (the mean
    loss in nats), which weigh the same fall differently."""
    ppl = (start - mid) / (start - end)
    nats = (math.log(start) - math.log(mid)) / (math.log(start) - math.log(end))
    return (f"{100 * ppl:.0f}% of the fall in perplexity "
            f"({100 * nats:.0f}% of the fall in mean loss)")


def excerpt(text: str, n_words: int = 30) -> str:
    """The first `n_words` words of a text, "…" if cut."""
    ws = (text or "").split()
    return " ".join(ws[:n_words]) + (" …" if len(ws) > n_words else "")


# The verdicts of the recipe sweep (chapter 3) and the conclusion (chapter 5)
# live in book.verdicts; the chapters reach them through this module.
from lorabook.book.verdicts import (_recipe_matches, conclusion,  # noqa: E402,F401
                                    nearer_on, paired_verdict, recipe_verdict)
