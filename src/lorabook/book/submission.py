"""Submission: the report PDF and the project ZIP the assignment asks for.

The student's name and code link are set once, as `author` and
`repository.url` in `_config.yml` (`report.student`). `make submission`
builds the PDF with that name on its title page and in its page headers
and writes `<Lastname_Firstname>_Project.pdf` and `..._Project.zip` (PDF,
README, executed notebooks, code, dataset, configs) at the repository root.
`make submission NAME=Doe_Jane` does the same where `_config.yml` still has
the placeholder author (the PDF then names "Jane Doe"); a NAME that
contradicts the author set in `_config.yml` is refused.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import zipfile
from pathlib import Path

from lorabook.config import REPO_ROOT, LorabookError
from lorabook.report import AUTHOR_ENV, PLACEHOLDER_AUTHOR, student

# Project files and folders that go into the ZIP, relative to the root.
INCLUDE = ["README.md", "Makefile", "pyproject.toml", "_config.yml", "_toc.yml",
           ".ci/run", "book", "src", "data", "configs", "tests", "benchmarks"]
# Never shipped: caches, environments, build products, weights.
EXCLUDE = re.compile(r"(^|/)(__pycache__|\.pytest_cache|\.ipynb_checkpoints|"
                     r"_build|\.venv|\.cache|runs|[^/]*\.egg-info)(/|$)|"
                     r"\.(pyc|safetensors|bin|gguf|pt|pth)$")
_NAME = re.compile(r"[A-Za-z][A-Za-z'-]*_[A-Za-z][A-Za-z'_-]*")


def author_from_name(name: str) -> str:
    """'Doe_Jane' -> 'Jane Doe' (Lastname_Firstname, as the course asks)."""
    last, first = name.split("_", 1)
    return f"{first.replace('_', ' ')} {last}"


def name_from_author(author: str) -> str:
    """'Jane Doe' -> 'Doe_Jane': the last word is taken as the last name."""
    words = author.split()
    return "_".join([words[-1], *words[:-1]]) if words else ""


def resolve(name: str | None = None, root: Path = REPO_ROOT,
            info: dict | None = None) -> tuple[str, str]:
    """(file name stem, author on the title page) for a submission.

    The author set in `_config.yml` wins; NAME only fills in for the
    placeholder, and must agree with a real author.
    """
    info = info or student(root)
    author = info["author"].strip()
    placeholder = author in ("", PLACEHOLDER_AUTHOR)
    if name is None:
        if placeholder:
            raise LorabookError(
                "set your name as `author` in _config.yml (or run `make "
                "submission NAME=Lastname_Firstname`)")
        name = name_from_author(author)
    if not _NAME.fullmatch(name):
        raise LorabookError(f"name {name!r} must look like Lastname_Firstname")
    if placeholder:
        return name, author_from_name(name)
    if name_from_author(author) != name:
        raise LorabookError(
            f"NAME={name} does not match author {author!r} in _config.yml; "
            f"use NAME={name_from_author(author)} or change the author there")
    return name, author


def built_author(build: Path) -> str | None:
    """The author the built PDF names (from its LaTeX source)."""
    tex = build / "latex" / "lorabook.tex"
    if not tex.is_file():
        return None
    m = re.search(r"\\author\{([^}]*)\}", tex.read_text(errors="replace"))
    return m.group(1).strip() if m else None


def executed_notebook(path: Path, build: Path) -> bytes:
    """The executed notebook, with its outputs.

    myst-nb writes `jupyter_execute/*.ipynb` with outputs only when it
    executed the notebook in that build; a rebuild from its cache (the PDF
    after the HTML, or `make submission`) writes them without. The outputs
    are then taken from the execution cache, which holds them.
    """
    data = path.read_bytes()
    cache_dir = build / ".jupyter_cache"
    if not cache_dir.is_dir():
        return data
    try:
        import nbformat
        from jupyter_cache import get_cache
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        _, merged = get_cache(str(cache_dir)).merge_match_into_notebook(nb)
        return nbformat.writes(merged).encode("utf-8")
    except (ImportError, KeyError, ValueError):
        return data             # no cached execution matches: as written


def make_submission(name: str | None = None, root: Path = REPO_ROOT,
                    build: Path | None = None,
                    out_dir: Path | None = None) -> tuple[Path, Path]:
    """Copy the built PDF and write the ZIP; returns their paths.

    Refuses when the book is not built or the PDF names someone else.
    """
    name, author = resolve(name, root)
    build = build or root / "book" / "_build"
    pdf = build / "latex" / "lorabook.pdf"
    # Only the chapters the book has now (a build folder keeps old ones).
    notebooks = sorted(nb for nb in (build / "jupyter_execute").glob("*.ipynb")
                       if (root / "book" / f"{nb.stem}.md").is_file())
    if not pdf.is_file() or not notebooks:
        raise LorabookError(
            f"no built book in {build}: run `make submission` (or "
            "`make book`) first")
    shown = built_author(build)
    if shown != author:
        raise LorabookError(
            f"the built PDF names {shown!r}, not {author!r}: run `make "
            f"submission NAME={name}`, which rebuilds it with that name")
    out_dir = out_dir or root
    out_pdf = out_dir / f"{name}_Project.pdf"
    out_zip = out_dir / f"{name}_Project.zip"
    shutil.copyfile(pdf, out_pdf)
    tmp = out_zip.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        top = f"{name}_Project"
        z.write(out_pdf, f"{top}/{out_pdf.name}")
        for nb in notebooks:
            z.writestr(f"{top}/notebooks/{nb.name}",
                       executed_notebook(nb, build))
        for item in INCLUDE:
            path = root / item
            if not path.exists():
                continue
            files = [path] if path.is_file() else sorted(path.rglob("*"))
            for f in files:
                rel = f.relative_to(root).as_posix()
                if EXCLUDE.search(rel):
                    continue
                if f.is_symlink() and f.is_file():   # book/_config.yml
                    z.writestr(f"{top}/{rel}", f.read_text())
                elif f.is_file():
                    z.write(f, f"{top}/{rel}")
    tmp.replace(out_zip)
    return out_pdf, out_zip


def main(argv=None) -> int:
    """`python -m lorabook.book.submission [--name N] [--author]` (the Makefile).

    --author prints the author the PDF must be built with and exits.
    """
    p = argparse.ArgumentParser(prog="python -m lorabook.book.submission")
    p.add_argument("--name", default=None, help="Lastname_Firstname")
    p.add_argument("--author", action="store_true",
                   help=f"print the author to build with (${AUTHOR_ENV})")
    args = p.parse_args(argv)
    try:
        if args.author:
            print(resolve(args.name or None)[1])
            return 0
        pdf, zipf = make_submission(args.name or None)
    except LorabookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {pdf.name} and {zipf.name}")
    info = student()
    if any(p.startswith("repository.url") for p in info["placeholders"]):
        print("WARNING: the code link on the title page is still the "
              f"placeholder {info['code_url']}: set `repository.url` in "
              "_config.yml and run `make submission` again.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
