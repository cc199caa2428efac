"""Book helpers (every chapter): quiet setup, real tables, glue, timings.

Chapters call `setup()` first. Tables are shown as Markdown so that they
become real tables in both the HTML and the PDF (a DataFrame would print as
plain text in the PDF).
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from lorabook.config import REPO_ROOT, Config, load_config


def setup() -> Config:
    """Quiet libraries, fixed seeds; returns the book's config.

    The preset comes from $LORABOOK_PRESET (default: `default`).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets
        datasets.utils.logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity_error()
    except ImportError:
        pass
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.set_seed(0)
    return load_config()


def table(rows, floatfmt: str = ".3f", index: bool = False):
    """A list of dicts or a DataFrame as a Markdown table (HTML and PDF)."""
    import pandas as pd
    from IPython.display import Markdown
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    df = df.copy()
    align = []
    for c in df.columns:
        if pd.api.types.is_float_dtype(df[c]):
            df[c] = df[c].map(lambda v: format(v, floatfmt))
            align.append("right")
        elif pd.api.types.is_numeric_dtype(df[c]):
            df[c] = df[c].map(str)
            align.append("right")
        else:
            df[c] = df[c].map(lambda v: _escape(str(v)))
            align.append("left")
    if index:
        align.insert(0, "left")
    # Cells are formatted here: tabulate must not re-parse strings such as
    # "107.3" or "3.6093" as numbers and re-format them with floatfmt.
    return Markdown(df.to_markdown(index=index, disable_numparse=True,
                                   colalign=align))


def _escape(text: str) -> str:
    """Keep cell text literal: no Markdown, one line, no control chars."""
    text = "".join(ch if ch >= " " or ch in "\t\n" else "\ufffd"
                   for ch in text)
    for ch in ("\\", "|", "*", "_", "`", "[", "]", "<", ">", "$"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def glue_all(values: dict, prefix: str = "") -> None:
    """Glue every value of a dict under `prefix + key`, without display."""
    from myst_nb import glue
    for k, v in values.items():
        glue(prefix + k, v, display=False)


def book_info() -> dict:
    """Author, title and code link from the top-level _config.yml."""
    import yaml
    cfg = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    return dict(author=cfg.get("author", ""), title=cfg.get("title", ""),
                code_url=(cfg.get("repository") or {}).get("url", ""))


def _timings_path(cfg: Config) -> Path:
    return cfg.resolve(cfg.output_dir).parent / f"timings-{cfg.preset}.json"


def record_time(cfg: Config, name: str, seconds: float) -> None:
    """Record the wall time of a book stage (shown in the appendix)."""
    path = _timings_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = round(seconds, 1)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


@contextmanager
def stage(cfg: Config, name: str):
    """Time a block and record it with `record_time`."""
    t0 = time.time()
    yield
    record_time(cfg, name, time.time() - t0)


def timings(cfg: Config) -> dict:
    path = _timings_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else {}
