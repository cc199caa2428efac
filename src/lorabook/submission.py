"""Submission: the report PDF and the project ZIP the assignment asks for.

`make submission NAME=Lastname_Firstname` writes `<NAME>_Project.pdf` and
`<NAME>_Project.zip` (PDF, README, executed notebooks, src, data, configs)
at the repository root. The book must have been built (`make book`).
"""
from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

from lorabook.config import REPO_ROOT, LorabookError

# Project files and folders that go into the ZIP, relative to the root.
INCLUDE = ["README.md", "Makefile", "pyproject.toml", "_config.yml", "_toc.yml",
           ".ci/run", "book", "src", "data", "configs", "tests"]
# Never shipped: caches, environments, build products, weights.
EXCLUDE = re.compile(r"(^|/)(__pycache__|\.pytest_cache|\.ipynb_checkpoints|"
                     r"_build|\.venv|\.cache|runs|[^/]*\.egg-info)(/|$)|"
                     r"\.(pyc|safetensors|bin|gguf|pt|pth)$")


def make_submission(name: str, root: Path = REPO_ROOT,
                    build: Path | None = None,
                    out_dir: Path | None = None) -> tuple[Path, Path]:
    if not re.fullmatch(r"[A-Za-z][A-Za-z'-]*_[A-Za-z][A-Za-z'-]*", name):
        raise LorabookError(
            f"name {name!r} must look like Lastname_Firstname")
    build = build or root / "book" / "_build"
    pdf = build / "latex" / "lorabook.pdf"
    notebooks = sorted((build / "jupyter_execute").glob("*.ipynb"))
    if not pdf.is_file() or not notebooks:
        raise LorabookError(
            f"no built book in {build}: run `make book` first")
    out_dir = out_dir or root
    out_pdf = out_dir / f"{name}_Project.pdf"
    out_zip = out_dir / f"{name}_Project.zip"
    shutil.copyfile(pdf, out_pdf)
    tmp = out_zip.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        top = f"{name}_Project"
        z.write(out_pdf, f"{top}/{out_pdf.name}")
        for nb in notebooks:
            z.write(nb, f"{top}/notebooks/{nb.name}")
        for item in INCLUDE:
            path = root / item
            files = [path] if path.is_file() else sorted(path.rglob("*"))
            for f in files:
                rel = f.relative_to(root).as_posix()
                if f.is_file() and not f.is_symlink() and not EXCLUDE.search(rel):
                    z.write(f, f"{top}/{rel}")
                elif f.is_symlink():       # book/_config.yml -> ../_config.yml
                    z.writestr(f"{top}/{rel}", f.read_text())
    tmp.replace(out_zip)
    return out_pdf, out_zip
