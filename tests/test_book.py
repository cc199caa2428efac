"""Builds the whole book with the tiny preset, strict, HTML and PDF."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorabook.config import REPO_ROOT

pytestmark = pytest.mark.slow
JB = str(Path(sys.executable).parent / "jupyter-book")


def test_title_page_code_link_matches_repository():
    cfg = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert cfg["sphinx"]["config"]["release"] == cfg["repository"]["url"]
    assert cfg["author"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, LORABOOK_PRESET="tiny")
    for extra in ([], ["--builder", "pdflatex"]):
        # -W: warnings are errors; -n: nitpicky references; allow_errors is
        # false in _config.yml, so a failing cell fails the build.
        proc = subprocess.run(
            [JB, "build", "book", "--path-output", str(out), "-W", "-n",
             "--keep-going", *extra],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out / "_build"


def test_html_chapters_and_glued_numbers(built):
    html = built / "html"
    for page in ("intro", "01_dataset", "02_preparation", "03_model",
                 "04_training", "05_evaluation", "A1_reproducibility"):
        assert (html / f"{page}.html").is_file(), page
    text = (html / "04_training.html").read_text()
    assert "Validation loss falls from" in text
    assert not re.search(r"\{glue:text\}", text)
    for page in html.glob("*.html"):
        assert "Traceback" not in page.read_text(), page.name


def test_pdf_exists_with_figures(built):
    pdf = built / "latex" / "lorabook.pdf"
    assert pdf.is_file() and pdf.stat().st_size > 50_000
    tex = (built / "latex" / "lorabook.tex").read_text()
    assert tex.count("\\sphinxincludegraphics") >= 4       # figures made it in
    assert "\\begin{tabulary}" in tex or "\\begin{longtable}" in tex
    assert "<Figure size" not in tex


def test_submission_zip_contents(built, tmp_path):
    import zipfile
    from lorabook.config import LorabookError
    from lorabook.submission import make_submission
    with pytest.raises(LorabookError, match="Lastname_Firstname"):
        make_submission("nobody", build=built, out_dir=tmp_path)
    pdf, zpath = make_submission("Doe_Jane", build=built, out_dir=tmp_path)
    assert pdf.name == "Doe_Jane_Project.pdf" and pdf.stat().st_size > 50_000
    names = zipfile.ZipFile(zpath).namelist()
    top = "Doe_Jane_Project/"
    assert all(n.startswith(top) for n in names)
    rel = [n[len(top):] for n in names]
    for needed in ("Doe_Jane_Project.pdf", "README.md", "pyproject.toml",
                   "src/lorabook/train.py", "data/sotu_passages.jsonl",
                   "data/DATASHEET.md", "configs/gpt2.yaml",
                   "notebooks/04_training.ipynb", "book/04_training.md"):
        assert needed in rel, needed
    for n in rel:
        assert not re.search(r"__pycache__|\.venv/|\.cache/|runs/|_build/|"
                             r"\.safetensors$|\.gguf$", n), n
    import json
    nb = json.loads(zipfile.ZipFile(zpath).read(top + "notebooks/04_training.ipynb"))
    assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
