"""The submission: one place for name and code link, the ZIP's contents."""
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from lorabook import report
from lorabook.book import submission as S
from lorabook.config import REPO_ROOT, LorabookError

CONFIG = """title: "A title"
author: "{author}"
repository:
  url: {url}
"""


def _root(tmp_path: Path, author=report.PLACEHOLDER_AUTHOR,
          url=report.PLACEHOLDER_CODE_URL) -> Path:
    """A small project tree: the files the ZIP must hold, and some it
    must leave out."""
    root = tmp_path / "project"
    for rel, text in {
            "README.md": "# readme\n", "Makefile": "all:\n",
            "pyproject.toml": "[project]\n", "_toc.yml": "root: intro\n",
            "src/lorabook/train.py": "x = 1\n",
            "src/lorabook/__pycache__/train.cpython-311.pyc": "junk",
            "data/sotu_passages.jsonl": '{"prompt": "p", "response": "r"}\n',
            "data/README.md": "# data\n", "book/04_training.md": "# 4\n",
            "configs/gpt2.yaml": "model_name: gpt2\n",
            "runs/default/adapter.safetensors": "weights"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "_config.yml").write_text(CONFIG.format(author=author, url=url))
    os.symlink("../_config.yml", root / "book" / "_config.yml")
    return root


def _build(tmp_path: Path, author: str) -> Path:
    build = tmp_path / "_build"
    (build / "latex").mkdir(parents=True)
    (build / "latex" / "lorabook.pdf").write_bytes(b"%PDF-1.5 fake")
    (build / "latex" / "lorabook.tex").write_text(
        f"\\title{{A title}}\n\\author{{{author}}}\n")
    (build / "jupyter_execute").mkdir()
    (build / "jupyter_execute" / "04_training.ipynb").write_text(json.dumps(
        {"cells": [{"cell_type": "code", "outputs": [{"text": "loss"}]}]}))
    return build


@pytest.fixture(autouse=True)
def _no_author_override(monkeypatch):
    monkeypatch.delenv(report.AUTHOR_ENV, raising=False)


def test_names():
    assert S.author_from_name("Doe_Jane") == "Jane Doe"
    assert S.name_from_author("Jane Doe") == "Doe_Jane"
    assert S.name_from_author(S.author_from_name("Smith_Mary_Ann")) != ""


def test_student_reads_one_place_and_flags_placeholders(tmp_path,
                                                        monkeypatch):
    info = report.student(_root(tmp_path))
    assert info["author"] == report.PLACEHOLDER_AUTHOR
    assert len(info["placeholders"]) == 2
    assert "WARNING (lorabook)" in report.placeholder_warning(info)
    monkeypatch.setenv(report.AUTHOR_ENV, "Jane Doe")
    info = report.student(tmp_path / "project")
    assert info["author"] == "Jane Doe" and len(info["placeholders"]) == 1
    real = report.student(_root(tmp_path / "b", "Jane Doe",
                                "https://github.com/janedoe/lorabook"))
    assert real["placeholders"] == [] and report.placeholder_warning(real) == ""


def test_resolve(tmp_path):
    placeholder = _root(tmp_path / "a")
    assert S.resolve("Doe_Jane", placeholder) == ("Doe_Jane", "Jane Doe")
    with pytest.raises(LorabookError, match="author"):
        S.resolve(None, placeholder)
    with pytest.raises(LorabookError, match="Lastname_Firstname"):
        S.resolve("nobody", placeholder)
    real = _root(tmp_path / "b", author="Jane Doe")
    assert S.resolve(None, real) == ("Doe_Jane", "Jane Doe")
    with pytest.raises(LorabookError, match="does not match"):
        S.resolve("Roe_Richard", real)


def test_zip_holds_readme_notebooks_code_and_data(tmp_path):
    root = _root(tmp_path)
    build = _build(tmp_path, "Jane Doe")
    pdf, zpath = S.make_submission("Doe_Jane", root=root, build=build,
                                   out_dir=tmp_path)
    assert (pdf.name, zpath.name) == ("Doe_Jane_Project.pdf",
                                      "Doe_Jane_Project.zip")
    with zipfile.ZipFile(zpath) as z:
        assert z.testzip() is None
        names = set(z.namelist())
        top = "Doe_Jane_Project/"
        for rel in ("Doe_Jane_Project.pdf", "README.md", "Makefile",
                    "pyproject.toml", "_config.yml", "book/_config.yml",
                    "src/lorabook/train.py", "data/sotu_passages.jsonl",
                    "data/README.md", "configs/gpt2.yaml",
                    "book/04_training.md", "notebooks/04_training.ipynb"):
            assert top + rel in names, rel
        assert not any("__pycache__" in n or "runs/" in n
                       or n.endswith(".safetensors") for n in names)
        assert z.read(top + "Doe_Jane_Project.pdf") == b"%PDF-1.5 fake"
        # The symlinked book config is shipped as the file it points to.
        assert z.read(top + "book/_config.yml") == z.read(top + "_config.yml")


def test_refuses_a_pdf_that_names_someone_else(tmp_path):
    root = _root(tmp_path)
    build = _build(tmp_path, report.PLACEHOLDER_AUTHOR)
    with pytest.raises(LorabookError, match="make submission NAME=Doe_Jane"):
        S.make_submission("Doe_Jane", root=root, build=build,
                          out_dir=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LorabookError, match="no built book"):
        S.make_submission("Doe_Jane", root=root, build=empty,
                          out_dir=tmp_path)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_submission_builds_the_pdf_with_the_name():
    out = subprocess.run(["make", "-n", "submission", "NAME=Doe_Jane"],
                         cwd=REPO_ROOT, capture_output=True, text=True).stdout
    assert "--author --name 'Doe_Jane'" in out
    assert "LORABOOK_AUTHOR=" in out and "--builder pdflatex" in out
    assert "lorabook.book.submission --name 'Doe_Jane'" in out
