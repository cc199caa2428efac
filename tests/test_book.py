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
    assert tex.count("\\includegraphics") >= 4       # figures made it in
    assert "\\begin{tabulary}" in tex or "\\begin{longtable}" in tex
    assert "<Figure size" not in tex
