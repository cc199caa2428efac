"""Figures of the training benchmark (`make bench`, benchmarks/README.md): matplotlib Figures.

Kept apart from `plots.py` (the report's chapters); the seaborn theme is
set inside each function, never on import.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

COLORS = {"reference": "#8c8c8c", "lorabook": "#4c72b0"}


def _theme():
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    return sns


def speed_memory_bars(result: dict):
    """Real tokens/s and peak RSS of both recipes, speedup annotated."""
    _theme()
    from benchmarks.harness import RECIPES
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    panels = (("tokens_per_s", "real tokens / s",
               f"{result['speedup']:.2f}x the speed"),
              ("peak_rss_mb", "peak RSS (MB)",
               f"{result['memory_ratio']:.2f}x the memory"))
    for ax, (key, label, note) in zip(axes, panels):
        vals = [result[r][key] for r in RECIPES]
        bars = ax.bar(RECIPES, vals, color=[COLORS[r] for r in RECIPES])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_ylabel(label)
        ax.set_ylim(0, max(vals) * 1.25)
        ax.set_title(f"lorabook: {note}", fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def profile_shares(result: dict):
    """Where one training step spends its time, per recipe (stacked)."""
    _theme()
    from benchmarks.harness import CATEGORIES, CATEGORY_LABELS, RECIPES
    import seaborn as sns
    palette = sns.color_palette("deep", len(CATEGORIES))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    # Bars in seconds per 1,000 real tokens: shares alone would hide that
    # the reference's whole bar is longer.
    for i, recipe in enumerate(RECIPES):
        e = result[recipe]
        shares = (e.get("profile") or {}).get("shares", {})
        per_ktok = 1000 / e["tokens_per_s"]
        left = 0.0
        for c, color in zip(CATEGORIES, palette):
            w = shares.get(c, 0) * per_ktok
            ax.barh(i, w, left=left, color=color,
                    label=CATEGORY_LABELS[c] if i == 0 else None)
            left += w
    ax.set_yticks(range(len(RECIPES)), RECIPES)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per 1,000 real tokens (split by profile shares)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28),
              ncol=2, frameon=False)
    fig.tight_layout()
    plt.close(fig)
    return fig
