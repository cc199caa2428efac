"""Book helpers (every chapter): quiet setup, real tables, glue, timings;
the student's name and code link from _config.yml (`student`, read by the
Sphinx extension `lorabook.book.sphinx_ext` and by `make submission`).

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

from lorabook.config import Config, load_config, project_root


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


# A table whose estimated height, in lines of the PDF's table text, is over
# this may break across pages (a longtable, its header repeated); any other
# table is kept whole on one page, moved to the next if it does not fit.
PAGE_LINES = 40
# Characters of table text across the PDF's text width (A4, Sphinx margins).
LINE_CHARS = 110


def table_lines(cells: list[list[str]], widths: tuple | None,
                caption: str = "") -> int:
    """Estimated height of a PDF table in lines: the caption, and each row
    (the header included) as tall as its most wrapped cell, where a column
    holds its share of `LINE_CHARS` (equal shares without `widths`)."""
    import math
    n = len(cells[0]) if cells else 1
    shares = [w / sum(widths) for w in widths] if widths else [1 / n] * n
    room = [max(4, int(LINE_CHARS * s) - 2) for s in shares]
    rows = sum(max(math.ceil(len(c) / r) or 1 for c, r in zip(row, room))
               for row in cells)
    return rows + math.ceil(len(caption) / LINE_CHARS) + 1


def table(rows, floatfmt: str = ".3f", index: bool = False,
          caption: str | None = None, name: str | None = None,
          code: tuple = (), widths: tuple | None = None, long: bool = False):
    """A list of dicts or a DataFrame as a Markdown table (HTML and PDF).

    `caption` (MyST inline markup; whitespace is collapsed to one line)
    makes it a numbered table with its caption above it, "Table 2.1:
    <caption>" in the PDF (the HTML numbers the tables through the whole
    book): the pipe table is wrapped in a MyST `{table}` directive, which
    myst-nb parses in the cell's Markdown output
    (`nb_render_markdown_format: myst`). `name` labels it for
    `` {numref}`name` `` and needs a caption. Cells of the columns named
    in `code` are set as inline code (identifiers: never hyphenated in the
    PDF). `widths` (percentages, one per column) fixes the PDF's column
    widths, ragged right, where LaTeX's own choice would split a word.
    A table is kept whole on one page of the PDF unless its estimated
    height (`table_lines`) is more than a page's; `long` lets it break
    across pages anyway (a longtable, its header repeated).
    """
    import pandas as pd
    from IPython.display import Markdown
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    df = df.copy()
    if widths is not None and len(widths) != len(df.columns) + index:
        raise ValueError("report.table: one width per column")
    align = []
    for c in df.columns:
        if pd.api.types.is_float_dtype(df[c]):
            df[c] = df[c].map(lambda v: format(v, floatfmt))
            align.append("right")
        elif pd.api.types.is_numeric_dtype(df[c]):     # counts: "13,400"
            df[c] = df[c].map(str if "year" in str(c).lower() else
                              (lambda v: f"{v:,}"))
            align.append("right")
        elif c in code:
            df[c] = df[c].map(lambda v: "`" + str(v).replace("`", "'")
                              .replace("|", "\\|") + "`")
            align.append("left")
        else:
            df[c] = df[c].map(lambda v: _escape(str(v)))
            align.append("left")
    if index:
        align.insert(0, "left")
    if not long:
        shown = df.reset_index() if index else df
        cells = [list(map(str, shown.columns))] + shown.astype(str).values.tolist()
        long = table_lines(cells, widths, caption or "") > PAGE_LINES
    # Column names are read as words: "stopped_at_EOS" -> "stopped at EOS".
    df.columns = [str(c).replace("_", " ") for c in df.columns]
    # Cells are formatted here: tabulate must not re-parse strings such as
    # "107.3" or "3.6093" as numbers and re-format them with floatfmt.
    text = df.to_markdown(index=index, disable_numparse=True, colalign=align)
    if caption is None:
        if name is not None:
            raise ValueError("report.table: a name needs a caption")
        return Markdown(text)
    caption = " ".join(caption.split())
    if not caption:
        raise ValueError("report.table: the caption is empty")
    # A colon fence: a notebook viewer that knows no MyST still shows the
    # table (with the directive's lines as text around it).
    head = (f":::{{table}} {caption}\n" + (f":name: {name}\n" if name else "")
            + (":class: longtable\n" if long else ""))
    spec = ""
    if widths is not None:
        total = sum(widths)
        spec = ("```{tabularcolumns} " + "".join(
            r">{\raggedright\arraybackslash}\X{%d}{%d}" % (w, total)
            for w in widths) + "\n```\n\n")
    return Markdown(f"{spec}{head}\n{text}\n:::")


def _escape(text: str) -> str:
    """Keep cell text literal: no Markdown, one line, no control chars."""
    text = "".join(ch if ch >= " " or ch in "\t\n" else "\ufffd"
                   for ch in text)
    for ch in ("\\", "|", "*", "_", "`", "[", "]", "<", ">", "$"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def wrap(*parts, width: int = 100) -> str:
    """Printed text in lines of at most `width` characters, its own line
    breaks kept: a long line in a PDF code output would otherwise be cut
    with a continuation mark."""
    import textwrap
    text = " ".join(str(p) for p in parts)
    return "\n".join(textwrap.fill(line, width, break_long_words=False,
                                    break_on_hyphens=False) or line
                      for line in text.split("\n"))


def glue_all(values: dict, prefix: str = "") -> None:
    """Glue every value of a dict under `prefix + key`, without display."""
    from myst_nb import glue
    for k, v in values.items():
        glue(prefix + k, v, display=False)


def book_info() -> dict:
    """Author, title and code link (`student()`, from _config.yml)."""
    info = student()
    return dict(author=info["author"], title=info["title"],
                code_url=info["code_url"])


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


# A stage that took less than this reused finished work (a trained run, a
# cached evaluation): it keeps the time it took when it really ran.
REUSED_SECONDS = 2.0


@contextmanager
def stage(cfg: Config, name: str):
    """Time a block and record it with `record_time`, unless the block only
    reused earlier work and a real measurement of it is on record."""
    t0 = time.time()
    yield
    seconds = time.time() - t0
    if seconds >= REUSED_SECONDS or name not in timings(cfg):
        record_time(cfg, name, seconds)


def timings(cfg: Config) -> dict:
    path = _timings_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else {}


# --------------------------------------------------------------------------
# The student's name and code link: set once, in _config.yml
# --------------------------------------------------------------------------

# The placeholders _config.yml ships with; a build that still has them says
# so at its start and its end.
PLACEHOLDER_AUTHOR = "Firstname Lastname"
PLACEHOLDER_CODE_URL = "https://github.com/YOUR-ACCOUNT/lorabook"
# `make submission NAME=Lastname_Firstname` builds the PDF with that name
# when _config.yml still has the placeholder author (submission.py).
AUTHOR_ENV = "LORABOOK_AUTHOR"


def student(root: Path | None = None) -> dict:
    """Author and code link: `author`, `repository.url` of _config.yml in
    `root` (default: `project_root()`, this checkout or a `lorabook new` one).

    $LORABOOK_AUTHOR replaces the author (the submission build sets it).
    `placeholders` lists what is still the shipped placeholder.
    """
    import yaml
    root = project_root() if root is None else root
    cfg = yaml.safe_load((root / "_config.yml").read_text())
    author = os.environ.get(AUTHOR_ENV) or str(cfg.get("author") or "")
    url = str((cfg.get("repository") or {}).get("url") or "")
    placeholders = []
    if author.strip() in ("", PLACEHOLDER_AUTHOR):
        placeholders.append(f"author ({author!r})")
    if url.strip() in ("", PLACEHOLDER_CODE_URL):
        placeholders.append(f"repository.url ({url!r})")
    return dict(author=author, code_url=url, title=cfg.get("title", ""),
                placeholders=placeholders)


def placeholder_warning(info: dict) -> str:
    """The warning a build with placeholders prints ('' when none)."""
    if not info["placeholders"]:
        return ""
    keys = " and ".join(f"`{p.split()[0]}`" for p in info["placeholders"])
    return ("WARNING (lorabook): the title page still shows the placeholder "
            + " and ".join(info["placeholders"])
            + f": set {keys} in _config.yml (README, \"Submitting\"), "
            "then rebuild.")


def machine_summary() -> str:
    """What this build ran on: CPU model, logical CPUs, GPU (or none)."""
    import platform
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    text = f"{cpu}, {os.cpu_count()} logical CPUs"
    try:
        import torch
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i)
                     for i in range(torch.cuda.device_count())]
            text += ", GPU: " + ", ".join(names)
        else:
            text += ", no GPU"
    except ImportError:
        pass
    return text


def build_note(cfg: Config) -> str:
    """One sentence on what kind of build this is, for the introduction."""
    if cfg.preset == "tiny":
        return ("This copy was built with the test configuration: a tiny, "
                "randomly initialised model on a few samples, so its numbers "
                "show that the pipeline runs, not what fine-tuning achieves.")
    if cfg.preset == "full":
        return ("This copy trained on the whole training split; chapter 4 "
                "gives how long that took.")
    return "Chapter 4 gives how long the training took on it."


def sig(x: float, digits: int = 4) -> str:
    """`x` for prose with at most `digits` significant digits: 27.61,
    0.005123, 10.83; a number of `digits` or more integer digits is
    rounded to a whole number with thousands separators (49,597)."""
    import math
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    exponent = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - exponent)
    text = f"{x:,.{decimals}f}"
    # Rounding may carry into a new digit (9.9996 -> 10.000): one fewer.
    if decimals and len(text.replace(",", "").replace(".", "")
                        .replace("-", "").lstrip("0")) > digits:
        text = f"{x:,.{decimals - 1}f}"
    return text
