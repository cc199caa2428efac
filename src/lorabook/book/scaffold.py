"""`lorabook new DIR --data PATH`: a report project for one's own dataset.

`new_project` writes a directory that `make book` builds into a report,
HTML and PDF, about the data given, with this lorabook:

    DIR/lorabook.yaml   the config (data path, columns, group column, model);
                        every lorabook command run in DIR or below reads it
    DIR/data/           a copy of the data and its dataset card (README.md):
                        the card given, else the data's own, else a starter
                        card whose placeholders the build warns about
    DIR/_config.yml     lorabook's own Jupyter Book config, with the title,
                        the author and the paths set for DIR
    DIR/_toc.yml        the chapters for this corpus (`book.toc`)
    DIR/book/           those chapters, their includes pointed at the
                        installed package; references.bib; an empty
                        readings.yaml; _config.yml and _toc.yml as links
    DIR/Makefile        `make book`: train, evaluate, then HTML and PDF
    DIR/README.md       what the project is and how to build it

Everything is checked before anything is written: the data load as
`lorabook data` loads them (a bad file is the loader's `error:`), the
config is valid, DIR is new or empty. The tree is written beside DIR and
renamed into place, so a failure leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import lorabook
from lorabook import card as C
from lorabook import data as D
from lorabook.book import toc as T
from lorabook.config import PROJECT_FILE, REPO_ROOT, Config, LorabookError
from lorabook.report import PLACEHOLDER_AUTHOR

# The installed package, whose sources the chapters' {literalinclude}s show.
PKG_DIR = Path(lorabook.__file__).resolve().parent
BOOK_SRC = REPO_ROOT / "book"
# Local MathJax of this checkout (`make setup` puts it there).
HTML_STATIC = REPO_ROOT / ".cache" / "html_static"
# Directives whose argument is a path relative to the chapter.
_PATH_DIRECTIVE = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{(?P<name>literalinclude|include|image|figure)\}"
    r"[ \t]+(?P<path>\S+)", re.M)


def _say(echo, *parts) -> None:
    if echo is not None:
        echo(" ".join(str(p) for p in parts))


def project_title(name: str, model: str | None = None) -> str:
    """The report's title for data called `name`."""
    who = ("a 135M-parameter model" if model is None
           else Path(model.replace("bundled:", "")).name)
    return f"LoRA fine-tuning of {who} on {name}"


def _set_line(text: str, key: str, value: str, where: str = "_config.yml") -> str:
    """Replace the one line `key: ...` (any indent) by `key: value`, keeping
    every other line and comment."""
    pattern = re.compile(rf"^(?P<indent>[ \t]*){re.escape(key)}:.*$", re.M)
    found = pattern.findall(text)
    if len(found) != 1:
        raise LorabookError(f"lorabook's {where} has {len(found)} `{key}:` "
                            f"lines, expected one; cannot write a project")
    return pattern.sub(lambda m: f"{m['indent']}{key}: {value}", text)


def config_yml(title: str, author: str | None) -> str:
    """lorabook's `_config.yml` with this project's title and author, and
    the static files (MathJax) of this checkout."""
    text = (REPO_ROOT / "_config.yml").read_text(encoding="utf-8")
    text = _set_line(text, "title", json.dumps(title, ensure_ascii=False))
    text = _set_line(text, "author", json.dumps(author or PLACEHOLDER_AUTHOR,
                                                ensure_ascii=False))
    text = _set_line(text, "html_static_path",
                     json.dumps([str(HTML_STATIC)], ensure_ascii=False))
    return ("# Written by `lorabook new` from lorabook's own _config.yml "
            f"({REPO_ROOT}).\n" + text)


def chapter_text(text: str, book_dir: Path) -> str:
    """A chapter of lorabook's book/ as it must read in `book_dir`: paths
    into lorabook's `src/lorabook/` point at the installed package, other
    paths outside book/ at this checkout, except `../data/` (the project's
    own data)."""
    def fix(m):
        path = m["path"]
        if not path.startswith("../"):
            return m[0]
        rel = path[3:]
        if rel.startswith("data/"):
            return m[0]
        if rel.startswith("src/lorabook/"):
            target = PKG_DIR / rel[len("src/lorabook/"):]
        else:
            target = REPO_ROOT / rel
        new = Path(os.path.relpath(target, book_dir)).as_posix()
        return m[0][:m.start("path") - m.start()] + new
    return _PATH_DIRECTIVE.sub(fix, text)


_CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")


def _bib_for(bib: str, chapters: list[str], card: C.Card | None) -> str:
    """lorabook's references.bib with only the entries the project's
    chapters cite (the bibliography prints every entry it holds), plus
    the card's citations (chapter 1 cites them)."""
    cited = {k.strip() for text in chapters for m in _CITE.finditer(text)
             for k in m[1].split(",")}
    card_keys = set(card.citation_keys()) if card is not None else set()
    bib = C.BIB_ENTRY.sub(lambda m: m[0] if m[2] in cited | card_keys else "", bib)
    if card is None:
        return bib
    have = {k for k, _ in C.bib_entries(bib)}
    extra = [e for k, e in C.bib_entries(card.bibtex()) if k not in have]
    if not extra:
        return bib
    return (bib.rstrip("\n") + "\n\n% From the dataset card's Citation "
            "section (data/README.md).\n" + "\n\n".join(extra) + "\n")


def config_fields(data_rel: str, *, text_column, prompt_column, response_column,
                  group_column, min_samples, model, instruction=None) -> dict:
    """The fields of the project's lorabook.yaml, in order."""
    fields: dict = {"data_path": data_rel}
    if text_column is not None:
        fields["text_column"] = text_column
    else:
        fields["prompt_column"] = prompt_column or "prompt"
        fields["response_column"] = response_column or "response"
    fields["group_column"] = group_column
    if min_samples is not None:
        fields["min_samples"] = min_samples
    if model is not None:
        fields["model_name"] = model
    if instruction is not None:
        fields["instruction"] = instruction
    return fields


def lorabook_yaml(fields: dict) -> str:
    lines = ["# This project's lorabook config: every lorabook command run in",
             "# this directory (or below it: the chapters run in book/) reads",
             "# it, and its relative paths resolve against this directory. Any",
             "# field of lorabook's Config (src/lorabook/config.py) may be set",
             "# here; the preset comes from $LORABOOK_PRESET (default: default).",
             "# group_column: a column of related samples that the split keeps",
             "# together (null: split sample by sample). instruction: what the",
             "# instructed base model is told in chapter 5, {prompt} where the",
             "# prompt goes (unset: a generic instruction)."]
    lines += [f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def makefile(bin_dir: Path) -> str:
    b = str(bin_dir)
    return f"""\
# Written by `lorabook new`: builds this project's report with the lorabook
# installed in {b}.
# `make book` trains and evaluates first, in the terminal (its progress),
# then builds the HTML and the PDF; the chapters reuse the finished run.
SHELL := /bin/bash
BIN   := {b}
# Training runs under tcmalloc where it is installed (as in lorabook's own
# Makefile); LORABOOK_ALLOCATOR=system keeps the system's allocator.
TCMALLOC = $(shell "$(BIN)/python" -m lorabook.speed.alloc 2>/dev/null)
WITH_ALLOC = $(if $(TCMALLOC),LD_PRELOAD="$(TCMALLOC)")

.PHONY: book run html pdf clean

book: run html pdf

run:
\t$(WITH_ALLOC) "$(BIN)/lorabook" train
\t$(WITH_ALLOC) "$(BIN)/lorabook" evaluate

html:
\t$(WITH_ALLOC) "$(BIN)/jupyter-book" build book

pdf:
\t$(WITH_ALLOC) "$(BIN)/jupyter-book" build book --builder pdflatex
\t@ls -l book/_build/latex/*.pdf

clean:
\trm -rf book/_build runs
"""


def readme(title: str, data_rel: str, card_rel: str, bin_dir: Path,
           starter: bool, warn_split: str) -> str:
    card_note = ("It is a starter card: fill in every\n"
                 f"   `{C.PLACEHOLDER}`; the build warns until you have."
                 if starter else "Chapter 1 prints it.")
    return f"""\
# {title}

A report project written by `lorabook new`. lorabook (at `{REPO_ROOT}`)
fine-tunes a small language model with LoRA on an 8-bit base on
`{data_rel}`, and this directory's book reports on it, as HTML and PDF:
building it runs the data preparation, the training, the evaluation and
the plots. lorabook's setup must be done once in its checkout (`make
setup` there: the base model, MathJax, TeX Live).

## The two steps

1. Describe the data and sign the report: the dataset card
   `{card_rel}` (Hugging Face's format; chapter 1 prints it; add the
   BibTeX of its Citation section to `book/references.bib` too).
   {card_note}
   In `_config.yml`, set `author` (your name) and `repository.url` (your
   code link): they go on the title page, and the build warns while they
   hold the placeholders.
2. Build it:

   ```bash
   make book    # lorabook train + evaluate, then the HTML and the PDF
   ```

   The HTML is `book/_build/html/index.html`, the PDF
   `book/_build/latex/lorabook.pdf`, the run in `runs/`. `make html` and
   `make pdf` build one of them; `LORABOOK_PRESET=tiny make book` a
   quick test copy with a tiny random model.
{warn_split}
## The command line

From this directory (every command reads `lorabook.yaml`):

```bash
{bin_dir}/lorabook train
{bin_dir}/lorabook evaluate
{bin_dir}/jupyter-book build book                      # HTML
{bin_dir}/jupyter-book build book --builder pdflatex   # PDF
```

`lorabook.yaml` holds the config (any field of lorabook's
`src/lorabook/config.py`), `_toc.yml` the chapters, `book/` their
notebooks, `book/readings.yaml` your reading of chapter 5's generations
(empty: chapter 5 says it is still to be written).
"""


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise LorabookError(f"{dest} exists and is not empty; `lorabook new` "
                            f"writes a new project: give a new directory")


def new_project(dest, data, *, card=None, name: str | None = None,
                title: str | None = None, text_column: str | None = None,
                prompt_column: str | None = None,
                response_column: str | None = None,
                group_column: str | None = None, min_samples: int | None = None,
                model: str | None = None, instruction: str | None = None,
                echo=print) -> Path:
    """Write a report project for the data at `data` into `dest` (new or
    empty) and return its path. `echo` prints the progress (None: quiet)."""
    dest = Path(dest).expanduser().absolute()
    src = Path(data).expanduser().absolute()
    if group_column == "none":
        group_column = None
    _check_dest(dest)
    if src.is_dir() and dest.resolve().is_relative_to(src.resolve()):
        raise LorabookError(f"{dest} is inside the dataset {src}; put the "
                            f"project elsewhere")
    # --- check everything first -----------------------------------------
    fields = config_fields("data/" + src.name, text_column=text_column,
                           prompt_column=prompt_column,
                           response_column=response_column,
                           group_column=group_column, min_samples=min_samples,
                           model=model, instruction=instruction)
    try:
        cfg = Config(**{**fields, "data_path": str(src)})
    except TypeError as e:
        raise LorabookError(f"invalid configuration: {e}") from None
    _say(echo, f"reading {src} ...")
    samples = D.load_samples(
        src, text_column=cfg.text_column, prompt_column=cfg.prompt_column,
        response_column=cfg.response_column, group_column=cfg.group_column,
        min_samples=cfg.min_samples)
    corpus = D.corpus_for(samples)
    _say(echo, f"  {len(samples):,} samples, corpus: {corpus.name}")
    splits = D.split_samples(samples, seed=cfg.seed, val_fraction=cfg.val_fraction,
                             test_fraction=cfg.test_fraction)
    short = [(opt, n, len(splits[name])) for name, opt, n in (
        ("train", "n_train", cfg.n_train), ("validation", "n_val", cfg.n_val),
        ("test", "n_test", cfg.n_test)) if n is not None and len(splits[name]) < n]
    warn_split = "" if not short else (
        "the default preset draws up to " + ", ".join(
            f"{o}={n}" for o, n, _ in short) + " samples; the splits of these "
        "data hold " + ", ".join(f"{h:,}" for *_, h in short)
        + ", so all of each is used.")
    if warn_split:
        _say(echo, "note: " + warn_split)
        warn_split = f"\n**Note.** {warn_split[0].upper()}{warn_split[1:]}\n"
    src_card = Path(card).expanduser().absolute() if card is not None \
        else C.card_path(src)
    if card is not None and not src_card.is_file():
        raise LorabookError(f"dataset card not found: {src_card}")
    the_card = C.load_card(src_card) if src_card.is_file() else None
    pretty = the_card.fact("pretty_name") if the_card else ""
    data_name = pretty if pretty and C.PLACEHOLDER not in pretty else src.stem
    title = title or project_title(data_name, model)
    files = T.book_files(corpus.features)
    missing = [f for f in files if not (BOOK_SRC / f"{f}.md").is_file()]
    if missing:
        raise LorabookError(f"lorabook's chapters {missing} are missing from "
                            f"{BOOK_SRC}")
    config_text = config_yml(title, name)
    # Sphinx joins an include to its resolved source dir and normalises
    # the result as text: the includes are relative to the resolved path.
    book_dest = dest.resolve() / "book"
    dest_data = dest / "data" / src.name
    # Where card_path will find it once the data are there.
    dest_card = (dest_data if src.is_dir() else dest_data.parent) / "README.md"
    if dest_card == dest_data:
        raise LorabookError(f"{src.name}: the data file cannot be called "
                            f"README.md (that is its card's name); rename it")
    # --- write beside dest, then rename into place ----------------------
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        (tmp / "data").mkdir()
        (tmp / "book").mkdir()
        t_data = tmp / "data" / src.name
        if src.is_dir():
            shutil.copytree(src, t_data, symlinks=False)
        else:
            shutil.copy2(src, t_data)
        t_card = C.card_path(t_data)
        starter = the_card is None
        if card is not None:
            shutil.copyfile(src_card, t_card)
        elif starter:
            C.write_starter_card(t_card, src.stem, len(samples))
        elif not t_card.is_file():           # the card beside a data file
            shutil.copyfile(src_card, t_card)
        (tmp / PROJECT_FILE).write_text(lorabook_yaml(fields), encoding="utf-8")
        (tmp / "_config.yml").write_text(config_text, encoding="utf-8")
        (tmp / "_toc.yml").write_text(T.toc_yaml(corpus.features), encoding="utf-8")
        for f in ("_config.yml", "_toc.yml"):
            os.symlink(f"../{f}", tmp / "book" / f)
        chapters = [(BOOK_SRC / f"{f}.md").read_text(encoding="utf-8")
                    for f in files]
        for f, text in zip(files, chapters):
            (tmp / "book" / f"{f}.md").write_text(
                chapter_text(text, book_dest), encoding="utf-8")
        bib = (BOOK_SRC / "references.bib").read_text(encoding="utf-8")
        (tmp / "book" / "references.bib").write_text(
            _bib_for(bib, chapters, the_card), encoding="utf-8")
        (tmp / "book" / "readings.yaml").write_text(
            "# Your reading of each generation chapter 5 shows, pinned to its\n"
            "# text (`python -m lorabook.book.reading` lists them with their\n"
            "# hashes). Empty: chapter 5 says the reading is still to be\n"
            "# written and prints computed checks instead.\n[]\n",
            encoding="utf-8")
        bin_dir = Path(sys.executable).absolute().parent
        (tmp / "Makefile").write_text(makefile(bin_dir), encoding="utf-8")
        (tmp / "README.md").write_text(readme(
            title, fields["data_path"], str(dest_card.relative_to(dest)),
            bin_dir, starter, warn_split), encoding="utf-8")
        (tmp / ".gitignore").write_text("book/_build/\nruns/\n", encoding="utf-8")
        if dest.exists():
            dest.rmdir()                       # empty, checked above
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(echo, f"wrote {dest}:")
    for rel, what in (
            (PROJECT_FILE, "the config"),
            (dest_data.relative_to(dest), "the data"),
            (dest_card.relative_to(dest),
             "the dataset card: " + ("a starter card, fill it in" if starter
                                     else "copied")),
            ("_config.yml", f"title {title!r}, author "
                            f"{name or PLACEHOLDER_AUTHOR!r}"),
            ("_toc.yml", f"{len(files)} chapters and sections"),
            ("book/", "the chapters, references.bib, readings.yaml"),
            ("Makefile", "make book | run | html | pdf"),
            ("README.md", "how to build it")):
        _say(echo, f"  {rel}: {what}")
    _say(echo, f"next: cd {dest} && make book")
    return dest


def add_new_command(sub) -> None:
    """The `lorabook new` subcommand, on the CLI's subparsers."""
    p = sub.add_parser("new", help="write a report project for your own data")
    p.add_argument("dest", metavar="DIR", help="the project (new or empty)")
    p.add_argument("--data", required=True, help="dataset path (copied)")
    p.add_argument("--card", help="its dataset card (default: README.md "
                   "beside the data, else a starter card)")
    p.add_argument("--name", help="your name, the report's author")
    p.add_argument("--title", help="the report's title")
    for opt in ("text", "prompt", "response"):
        p.add_argument(f"--{opt}-column")
    p.add_argument("--group-column", help="column grouping related samples "
                   "(default and 'none': split sample by sample)")
    p.add_argument("--min-samples", type=int)
    p.add_argument("--model", help="base model (default: the bundled one)")
    p.add_argument("--instruction", help="what the instructed base model is "
                   "told in chapter 5; {prompt} marks the prompt's place "
                   "(default: a generic instruction)")
    p.set_defaults(func=_cmd_new)


def _cmd_new(args) -> int:
    new_project(args.dest, args.data, **{k: getattr(args, k) for k in (
        "card", "name", "title", "text_column", "prompt_column",
        "response_column", "group_column", "min_samples", "model",
        "instruction")})
    return 0
