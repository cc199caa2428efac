"""Sphinx extension of the book (`sphinx.extra_extensions` in _config.yml).

Puts the student's name and code link, set once in _config.yml
(`report.student`), on the LaTeX title page (Sphinx's `author` and
`release`, shown after "Code:"), in the PDF's page headers and in the
MyST substitutions `{{ author }}` and `{{ code_url }}` the introduction
uses; a build that still has the shipped placeholders says so in red at
its start and its end, as does a dataset card that still holds the
template's placeholders (`card_warning`).
"""
from __future__ import annotations

from pathlib import Path

from lorabook.report import placeholder_warning, student


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"),
                 ("$", r"\$"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"),
                 ("}", r"\}"), ("~", r"\textasciitilde{}"),
                 ("^", r"\textasciicircum{}")):
        text = text.replace(a, b)
    return text


def _config_inited(app, config) -> None:
    from sphinx.util import logging as slog
    from sphinx.util.console import red
    info = student(Path(app.confdir).resolve().parent)
    # The LaTeX title page reads author and release (shown after
    # `releasename`, "Code:"); the chapters read the MyST substitutions.
    config.author = info["author"]
    config.release = info["code_url"]
    config.version = ""
    config.myst_substitutions = dict(config.myst_substitutions or {},
                                     author=info["author"],
                                     code_url=info["code_url"])
    # Page headers: the author and the code link on every page; footers:
    # the page number only (a section name there would be wrong wherever a
    # section starts mid-page, as the chapters run on).
    elements = dict(config.latex_elements or {})
    elements["preamble"] = elements.get("preamble", "") + (
        "\n\\makeatletter\\fancypagestyle{normal}{\\fancyhf{}"
        "\\fancyfoot[R]{{\\py@HeaderFamily\\thepage}}"
        "\\fancyhead[L]{{\\py@HeaderFamily "
        + _latex_escape(info["author"]) + "}}"
        "\\fancyhead[R]{{\\py@HeaderFamily\\small\\url{"
        + info["code_url"].replace("%", r"\%").replace("#", r"\#") + "}}}"
        "\\renewcommand{\\headrulewidth}{0.4pt}"
        "\\renewcommand{\\footrulewidth}{0.4pt}}\\makeatother\n"
        # The title, author, code link and date above the contents, on one
        # page (Sphinx's title page fills a page of its own).
        "\\makeatletter\\newcommand{\\lorabooktitle}{\\begingroup"
        "\\hypersetup{pdfauthor={\\@author}, pdftitle={\\@title}}"
        "\\centering\\py@HeaderFamily{\\LARGE\\bfseries\\@title\\par}"
        "\\vskip 10pt{\\large\\@author\\par}\\vskip 4pt"
        "{\\itshape\\py@release\\par}\\vskip 4pt{\\@date\\par}"
        "\\endgroup\\vskip 28pt\\thispagestyle{empty}}\\makeatother\n")
    elements["maketitle"] = "\\lorabooktitle"
    config.latex_elements = elements
    app.lorabook_warning = "\n".join(
        w for w in (placeholder_warning(info), card_warning()) if w)
    if app.lorabook_warning:
        # Not a Sphinx warning: a strict (-W) test build with the shipped
        # placeholders must still pass; printed in red at start and end.
        slog.getLogger(__name__).info(red(app.lorabook_warning))


def card_warning() -> str:
    """A warning while the data's card is missing or still holds the
    starter card's placeholders; "" for a filled card."""
    from lorabook import card as C
    from lorabook.config import LorabookError, load_config
    cfg = load_config()
    path = C.card_path(cfg.resolve(cfg.data_path))
    try:
        todo = C.load_card(path).placeholders()
    except LorabookError as e:
        return f"WARNING: {e}"
    if not todo:
        return ""
    return (f"WARNING: the dataset card {path} still holds placeholders "
            f"({C.PLACEHOLDER}) in: {', '.join(todo)}. Fill them in: "
            f"chapter 1 prints them.")


def reading_warning(root: Path) -> str:
    """The stale-reading warning of the book's run (`book.reading`), or ""
    when every shown generation has its reading or there is no run yet."""
    import json
    from lorabook import train as T
    from lorabook.book import reading as R
    from lorabook.config import load_config
    cfg = load_config()
    path = T.run_dir(cfg) / "generations.jsonl"
    if not path.is_file():
        return ""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    # The readings answer the criteria of the data's corpus (chapter 5).
    return R.stale_warning(records, R.load_readings(root / R.READINGS_FILE,
                                                    R.criteria_for(cfg)))


def _build_finished(app, exc) -> None:
    from sphinx.util import logging as slog
    from sphinx.util.console import red
    if getattr(app, "lorabook_warning", ""):
        slog.getLogger(__name__).info(red(app.lorabook_warning))
    stale = reading_warning(Path(app.confdir).resolve().parent)
    if stale:
        slog.getLogger(__name__).info(red(stale))


def setup(app):
    """Sphinx extension (`sphinx.extra_extensions` in _config.yml)."""
    app.connect("config-inited", _config_inited)
    app.connect("build-finished", _build_finished)
    return dict(parallel_read_safe=True, parallel_write_safe=True)
