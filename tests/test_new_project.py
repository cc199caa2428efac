"""A report on data that are not the State of the Union, end to end (slow).

`lorabook new` writes a project for each of two small sets of our own
making (`tests/data/make_sets.py`, from Debian packages), and each is then
built as its README says, with the tiny preset: `lorabook train`,
`lorabook evaluate`, then `jupyter-book build book` strict (-W -n), HTML
and PDF. The two sets cover what the loader takes that the shipped corpus
does not: prompt/response pairs with `group_column: null` (WordNet
definitions, with a dataset card) and text only, below the assignment's
1,000-sample floor, with no card (fortunes: a starter card is written)
and an instruction of its own for the instructed base model.
Both sets leave out the few entries that name the State of the Union's
subjects, so a search of the PDF for its words finds only the report's own.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorabook.book import scaffold as S
from lorabook.report import AUTHOR_ENV

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"
BIN = Path(sys.executable).parent
AUTHOR = "Jane Doe"
INSTRUCTION = "Write one short saying, joke or quotation. Write only that."
PROJECTS = {
    "definitions": dict(data=DATA / "wordnet" / "wordnet_nouns.jsonl",
                        group_column="none"),
    "fortunes": dict(data=DATA / "fortunes" / "fortunes.txt", min_samples=800,
                     instruction=INSTRUCTION),
}
# Words of the State of the Union report that no report on other data may
# print (the test sets themselves hold none of them).
SOTU_WORDS = re.compile(r"State of the Union|SOTU|President|Congress|annual "
                        r"message|\baddresses\b|\bspeeches\b|\bera\b", re.I)


def _run(cmd, cwd, env):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, (f"{cmd} failed:\n" + proc.stdout[-4000:]
                                  + proc.stderr[-4000:])
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module", params=sorted(PROJECTS))
def project(request, tmp_path_factory):
    kind = request.param
    opts = dict(PROJECTS[kind])
    dest = tmp_path_factory.mktemp("projects") / kind
    S.new_project(dest, opts.pop("data"), name=AUTHOR, echo=None, **opts)
    env = dict(os.environ, LORABOOK_PRESET="tiny")
    env.pop(AUTHOR_ENV, None)
    logs = {}
    logs["train"] = _run([BIN / "lorabook", "train"], dest, env)
    logs["evaluate"] = _run([BIN / "lorabook", "evaluate"], dest, env)
    for builder, extra in (("html", []), ("pdf", ["--builder", "pdflatex"])):
        logs[builder] = _run([BIN / "jupyter-book", "build", "book", "-W", "-n",
                              "--keep-going", *extra], dest, env)
    pdf = dest / "book" / "_build" / "latex" / "lorabook.pdf"
    assert pdf.is_file(), logs["pdf"][-3000:]
    raw = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True,
                         text=True, check=True).stdout
    # One line of text: words hyphenated at a line end joined again.
    # Straight quotes for the typeset curly ones.
    text = re.sub(r"\s+", " ", re.sub(r"-\n(?=[a-z])", "", raw))
    text = text.translate(str.maketrans("\u2018\u2019\u201c\u201d", "''\"\""))
    return SimpleNamespace(kind=kind, dir=dest, pdf=pdf, text=text, logs=logs)


def test_the_pdf_and_html_are_built_from_the_projects_own_run(project):
    d = project.dir
    assert (d / "book" / "_build" / "html" / "index.html").is_file()
    runs = [p for p in (d / "runs").iterdir() if (p / "metrics.json").is_file()]
    assert len(runs) == 1, "the run lives in the project's runs/, not lorabook's"
    cfg = json.loads((runs[0] / "config.json").read_text())
    assert cfg["data_path"] == "data/" + PROJECTS[project.kind]["data"].name
    assert cfg["preset"] == "tiny"
    assert project.pdf.stat().st_size > 50_000
    assert AUTHOR in project.text


def test_no_word_of_the_state_of_the_union(project):
    hits = sorted({m.group(0) for m in SOTU_WORDS.finditer(project.text)})
    where = [project.text[max(0, m.start() - 80):m.end() + 40]
             for m in SOTU_WORDS.finditer(project.text)][:5]
    assert not hits, f"{hits} in the {project.kind} report: {where}"


def test_the_rubrics_floor_is_stated(project):
    below = "below the assignment's floor of 1,000 samples"
    if project.kind == "fortunes":
        assert below in project.text
        assert "does not meet the rubric's size requirement" in project.text
    else:
        assert below not in project.text
        assert "the assignment's floor of 1,000 samples" in project.text


def test_the_split_says_there_is_no_group(project):
    sentence = "These data have no group column, so each sample is its own group"
    assert sentence in project.text          # both sets split sample by sample


def test_the_reading_is_still_to_be_written(project):
    assert ("my reading of these generations is still to be written"
            in project.text)


def test_the_card_is_printed_or_its_placeholders_are_warned(project):
    if project.kind == "definitions":
        assert "WordNet noun definitions" in project.text   # its pretty_name
        assert "still holds placeholders" not in project.logs["html"]
    else:
        assert "still holds placeholders" in project.logs["html"]
        assert "still holds placeholders" in project.logs["pdf"]


def test_the_title_names_the_data(project):
    name = "WordNet noun definitions" if project.kind == "definitions" else "fortunes"
    assert S.project_title(name) in project.text


def test_the_instructed_base_model_is_told_the_projects_instruction(project):
    gens = [json.loads(l) for l in next((project.dir / "runs").glob(
        "*/generations.jsonl")).read_text().splitlines()]
    if project.kind == "fortunes":
        assert all(g["instructed_prompt"] == INSTRUCTION for g in gens)
        assert INSTRUCTION in project.text
    else:
        assert all(g["instructed_prompt"].startswith("Write the reply to the following")
                   for g in gens)


def test_sentences_follow_the_kind_of_data(project):
    """What a strict reader of the first builds found written for another
    kind of data: prompts for text-only data, a floor met that is not, the
    overlap scores dismissed as for open continuations, a bibliography
    entry only the State of the Union's sections cite."""
    t = project.text
    assert "Carlini" not in t
    if project.kind == "fortunes":
        assert "One requirement is not met: the data have 817 samples" in t
        assert "These data have no prompts: every generation starts" in t
        assert "PROMPT: (none: text-only data)" in t
        assert "These data have no prompts: the masked prompt is only" in t
    else:
        assert "One requirement is not met" not in t
        assert "Each prompt has one real response, so these scores" in t
        assert "PROMPT: (none: text-only data)" not in t
