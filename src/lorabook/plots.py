"""Figures for the book: each function returns a matplotlib Figure.

The seaborn theme is set inside each function, never on import.
"""
from __future__ import annotations

import matplotlib.pyplot as plt


def _theme():
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    return sns


def passages_per_decade(samples):
    sns = _theme()
    import pandas as pd
    df = pd.DataFrame({"decade": [s["year"] // 10 * 10 for s in samples]})
    counts = df.value_counts("decade").sort_index()
    fig, ax = plt.subplots(figsize=(7, 2.4))
    sns.barplot(x=counts.index.astype(str), y=counts.values, ax=ax,
                color="#4c72b0")
    ax.set_xlabel("decade")
    ax.set_ylabel("passages")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def length_histogram(lengths: dict, max_length: int):
    sns = _theme()
    import pandas as pd
    df = pd.concat([pd.DataFrame({"tokens": v, "part": k})
                    for k, v in lengths.items()])
    fig, ax = plt.subplots(figsize=(7, 2.6))
    sns.histplot(df, x="tokens", hue="part", element="step", bins=40, ax=ax)
    ax.axvline(max_length, ls="--", color="black", lw=1)
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    fig.tight_layout()
    plt.close(fig)
    return fig


def loss_curve(log_history: list, base_val_loss: float):
    """Training loss per logging step, validation loss per evaluation, base line."""
    sns = _theme()
    import pandas as pd
    train = pd.DataFrame([r for r in log_history if "loss" in r])
    val = pd.DataFrame([r for r in log_history if "eval_loss" in r])
    fig, ax = plt.subplots(figsize=(7, 3.0))
    sns.lineplot(x=train["epoch"], y=train["loss"], ax=ax,
                 label="training loss (per logging step)", lw=1)
    sns.lineplot(x=val["epoch"], y=val["eval_loss"], ax=ax, marker="o",
                 label="validation loss (per evaluation)", lw=2)
    ax.axhline(base_val_loss, ls="--", color="grey",
               label=f"base model, validation ({base_val_loss:.3f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
