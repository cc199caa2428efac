"""`lorabook new DIR --data PATH`: the report project for one's own data
(lorabook.book.scaffold). Fast: no model, no build."""
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lorabook import card as C
from lorabook import cli, report
from lorabook.book import scaffold as S
from lorabook.book import sphinx_ext
from lorabook.book import toc
from lorabook.config import PROJECT_FILE, REPO_ROOT, LorabookError, load_config, project_root
from lorabook.corpus import GENERIC

CARD = """---
pretty_name: Letters to the editor
license: cc-by-4.0
language:
- en
size_categories:
- n<1K
---
# Dataset card

## Dataset Description

Letters.

## Citation

@misc{letters2026,
  title = {Letters to the editor},
  year  = {2026}
}
"""


@pytest.fixture(autouse=True)
def _no_author_override(monkeypatch):
    monkeypatch.delenv(report.AUTHOR_ENV, raising=False)


@pytest.fixture
def pairs(tmp_path) -> Path:
    p = tmp_path / "src" / "letters.jsonl"
    p.parent.mkdir()
    p.write_text("".join(json.dumps({"prompt": f"Dear editor, number {i}",
                                     "response": f"I write about item {i}."}) + "\n"
                         for i in range(30)))
    return p


@pytest.fixture
def texts(tmp_path) -> Path:
    p = tmp_path / "src" / "poems.txt"
    p.parent.mkdir(exist_ok=True)
    p.write_text("".join(f"A short line of verse, number {i}.\n" for i in range(30)))
    return p


def _new(dest, data, **kw):
    return S.new_project(dest, data, min_samples=10, echo=None, **kw)


def test_new_project_writes_the_whole_tree(tmp_path, pairs):
    dest = _new(tmp_path / "proj", pairs, name="Jane Doe")
    assert dest == tmp_path / "proj"
    files = toc.book_files(GENERIC.features)
    for rel in [PROJECT_FILE, "_config.yml", "_toc.yml", "Makefile", "README.md",
                "data/letters.jsonl", "data/README.md", "book/references.bib",
                "book/readings.yaml", *(f"book/{f}.md" for f in files)]:
        assert (dest / rel).is_file(), rel
    assert (dest / "data/letters.jsonl").read_bytes() == pairs.read_bytes()
    # Only the chapters of this corpus; none of the SOTU student's readings.
    assert sorted(p.stem for p in (dest / "book").glob("*.md")) == sorted(files)
    assert yaml.safe_load((dest / "book/readings.yaml").read_text()) == []
    # The book's config files are relative links, as in the repository.
    for f in ("_config.yml", "_toc.yml"):
        link = dest / "book" / f
        assert link.is_symlink() and str(link.readlink()) == f"../{f}"
        assert link.read_text() == (dest / f).read_text()
    # Nothing left beside it (the tree is written aside and renamed).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "src"]


def test_toc_is_the_corpus_toc(tmp_path, texts):
    dest = _new(tmp_path / "proj", texts)
    text = (dest / "_toc.yml").read_text()
    assert text == toc.toc_yaml(GENERIC.features)
    assert yaml.safe_load(text)["root"] == "intro"


def test_every_include_of_the_chapters_resolves(tmp_path, pairs):
    dest = _new(tmp_path / "deep" / "er" / "proj", pairs)
    book = dest / "book"
    seen = 0
    for md in book.glob("*.md"):
        for m in re.finditer(r"^(?:`{3,}|:{3,})\{(literalinclude|include|image|figure)\}"
                             r"[ \t]+(\S+)", md.read_text(), re.M):
            target = (book / m[2]).resolve()
            assert target.is_file(), (md.name, m[2])
            seen += 1
    assert seen > 10
    text = (book / "02_preparation.md").read_text()
    assert "../src/lorabook/" not in text
    assert (book / re.search(r"\{literalinclude\} (\S+data\.py)", text)[1]).resolve() \
        == (Path(S.lorabook.__file__).parent / "data.py").resolve()


def test_includes_resolve_through_a_linked_parent(tmp_path, pairs):
    """Sphinx joins an include to its resolved source dir and normalises
    the result as text."""
    import os
    real = tmp_path / "a" / "b" / "real"        # deeper than the link
    real.mkdir(parents=True)
    os.symlink(real, tmp_path / "link")
    dest = _new(tmp_path / "link" / "proj", pairs)
    book = real / "proj" / "book"
    inc = re.search(r"\{literalinclude\} (\S+)",
                    (dest / "book" / "02_preparation.md").read_text())[1]
    assert Path(os.path.normpath(book / inc)).is_file(), inc


def test_chapter_paths_outside_book(tmp_path):
    book = tmp_path / "p" / "book"
    text = ("```{literalinclude} ../src/lorabook/train.py\n```\n"
            "```{literalinclude} ../data/README.md\n```\n"
            "```{literalinclude} ../benchmarks/README.md\n```\n"
            "```{literalinclude} local.py\n```\n")
    out = S.chapter_text(text, book).splitlines()
    assert (book / out[0].split()[1]).resolve() == (S.PKG_DIR / "train.py").resolve()
    assert out[2] == "```{literalinclude} ../data/README.md"
    assert (book / out[4].split()[1]).resolve() == \
        (REPO_ROOT / "benchmarks/README.md").resolve()
    assert out[6] == "```{literalinclude} local.py"


def test_the_config_is_the_projects(tmp_path, pairs, monkeypatch):
    dest = _new(tmp_path / "proj", pairs, group_column=None, model="tiny-random")
    raw = yaml.safe_load((dest / PROJECT_FILE).read_text())
    assert raw == {"data_path": "data/letters.jsonl", "prompt_column": "prompt",
                   "response_column": "response", "group_column": None,
                   "min_samples": 10, "model_name": "tiny-random"}
    cfg = load_config("default", dest / PROJECT_FILE)
    assert cfg.group_column is None and cfg.min_samples == 10
    # The chapters run in book/, the commands in the project: both find it.
    for where in (dest, dest / "book"):
        monkeypatch.chdir(where)
        assert project_root() == dest
        cfg = load_config()
        assert cfg.resolve(cfg.data_path) == dest / "data" / "letters.jsonl"
        assert cfg.resolve(cfg.data_path).is_file()
        assert cfg.model_name == "tiny-random"


def test_text_only_data_and_custom_columns(tmp_path, texts):
    dest = _new(tmp_path / "p1", texts)
    raw = yaml.safe_load((dest / PROJECT_FILE).read_text())
    assert raw["data_path"] == "data/poems.txt" and raw["group_column"] is None
    csv = tmp_path / "src" / "qa.csv"
    csv.write_text("q,a,topic\n" + "".join(f"ask {i},say {i},t{i % 4}\n"
                                           for i in range(30)))
    dest = _new(tmp_path / "p2", csv, prompt_column="q", response_column="a",
                group_column="topic")
    raw = yaml.safe_load((dest / PROJECT_FILE).read_text())
    assert (raw["prompt_column"], raw["response_column"], raw["group_column"]) \
        == ("q", "a", "topic")
    dest = _new(tmp_path / "p3", csv, text_column="a")
    raw = yaml.safe_load((dest / PROJECT_FILE).read_text())
    assert raw["text_column"] == "a" and "prompt_column" not in raw


def test_config_yml_keeps_lorabooks_and_sets_the_project(tmp_path, pairs):
    dest = _new(tmp_path / "proj", pairs, name="Jane Doe")
    ours = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    text = (dest / "_config.yml").read_text()
    theirs = yaml.safe_load(text)
    assert theirs["title"] == "LoRA fine-tuning of a 135M-parameter model on letters"
    assert theirs["author"] == "Jane Doe"
    static = theirs["sphinx"]["config"]["html_static_path"]
    assert static == [str(REPO_ROOT / ".cache" / "html_static")]
    assert theirs["bibtex_bibfiles"] == ["references.bib"]
    # Everything else as in lorabook's own config, comments included.
    for d in (ours, theirs):
        d.pop("title"), d.pop("author"), d["sphinx"]["config"].pop("html_static_path")
    assert theirs == ours
    assert "# The student's name and code link" in text
    assert "# MathJax from this machine" in text
    # No name given: the placeholder stays, and the build warns about it.
    dest = _new(tmp_path / "proj2", pairs, title="My letters")
    info = report.student(dest)
    assert info["title"] == "My letters"
    assert info["author"] == report.PLACEHOLDER_AUTHOR and info["placeholders"]


def test_the_title_page_reads_the_projects_config(tmp_path, pairs, monkeypatch):
    dest = _new(tmp_path / "proj", pairs, name="Jane Doe")
    monkeypatch.chdir(dest / "book")            # where the chapters run
    assert report.student()["author"] == "Jane Doe"
    assert report.book_info()["title"].endswith("on letters")
    config = SimpleNamespace(myst_substitutions={}, latex_elements={},
                             author=None, release=None, version=None)
    app = SimpleNamespace(confdir=str(dest / "book"))
    monkeypatch.chdir(dest)                     # where `make html` runs
    sphinx_ext._config_inited(app, config)
    assert config.author == "Jane Doe"
    assert config.myst_substitutions["author"] == "Jane Doe"
    assert "data/README.md" in app.lorabook_warning        # the starter card
    # In this checkout: its own config, as before.
    monkeypatch.chdir(REPO_ROOT)
    ours = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert report.student()["title"] == ours["title"]


def test_a_given_card_is_copied_and_cited(tmp_path, pairs):
    card = tmp_path / "card.md"
    card.write_text(CARD)
    dest = _new(tmp_path / "proj", pairs, card=card)
    assert (dest / "data/README.md").read_text() == CARD
    assert yaml.safe_load((dest / "_config.yml").read_text())["title"].endswith(
        "on Letters to the editor")
    assert "@misc{letters2026," in (dest / "book/references.bib").read_text()
    assert not C.load_card(dest / "data/README.md").placeholders()


def test_the_bibliography_holds_what_the_projects_chapters_cite(tmp_path, pairs):
    """The bibliography prints every entry: a project's holds lorabook's
    entries that its chapters cite (not the State of the Union's data, not
    the contamination check's paper, which only the SOTU sections cite),
    entry for entry, and its card's."""
    ours = (REPO_ROOT / "book" / "references.bib").read_text()
    keys = lambda bib: re.findall(r"^@\w+\{([^,\s]+),", bib, re.M)
    card = tmp_path / "card.md"
    card.write_text(CARD)
    for given in (None, card):
        dest = _new(tmp_path / f"proj{given is None}", pairs, card=given)
        bib = (dest / "book/references.bib").read_text()
        chapters = " ".join(p.read_text() for p in (dest / "book").glob("*.md"))
        roles = {k for ks in re.findall(r"\{cite:\w+\}`([^`]+)`", chapters)
                 for k in ks.split(",")}
        cited = [k for k in keys(ours) if k in roles]
        assert keys(bib) == cited + (["letters2026"] if given else [])
        assert {"hu2022lora", "lin2004rouge", "trl_issue976"} <= set(cited)
        assert not {"stdlib_sotu", "wikisource_sotu", "carlini2021extracting"} & set(keys(bib))
        body = lambda k, b: re.search(rf"^@\w+\{{{k},.*?^\}}", b, re.S | re.M)[0]
        assert all(body(k, bib) == body(k, ours) for k in cited)


def test_the_datas_own_card_is_copied(tmp_path, pairs, monkeypatch):
    (pairs.parent / "README.md").write_text(CARD)
    dest = _new(tmp_path / "proj", pairs)
    assert (dest / "data/README.md").read_text() == CARD
    monkeypatch.chdir(dest)
    assert sphinx_ext.card_warning() == ""


def test_no_card_gives_a_starter_card_that_warns(tmp_path, pairs, monkeypatch):
    dest = _new(tmp_path / "proj", pairs)
    card = dest / "data" / "README.md"
    assert C.PLACEHOLDER in card.read_text()
    assert C.load_card(card).placeholders()
    monkeypatch.chdir(dest)
    warning = sphinx_ext.card_warning()
    assert str(card) in warning and C.PLACEHOLDER in warning


def test_a_saved_dataset_directory(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    src = tmp_path / "ds"
    datasets.Dataset.from_list([{"text": f"line {i}"} for i in range(12)]) \
        .save_to_disk(str(src))
    dest = _new(tmp_path / "proj", src)
    assert (dest / "data/ds/state.json").is_file()
    card = dest / "data/ds/README.md"       # card_path of a directory
    assert C.card_path(dest / "data/ds") == card and C.PLACEHOLDER in card.read_text()
    monkeypatch.chdir(dest / "book")
    cfg = load_config()
    assert cfg.resolve(cfg.data_path) == dest / "data/ds"


def test_a_project_inside_its_dataset_directory_is_refused(tmp_path):
    src = tmp_path / "ds"
    src.mkdir()
    with pytest.raises(LorabookError, match="inside the dataset"):
        _new(src / "proj", src)
    assert list(src.iterdir()) == []


def test_a_missing_card_file_is_an_error(tmp_path, pairs):
    with pytest.raises(LorabookError, match="card not found"):
        _new(tmp_path / "proj", pairs, card=tmp_path / "nope.md")
    assert not (tmp_path / "proj").exists()


def test_a_non_empty_dest_is_refused_and_untouched(tmp_path, pairs):
    dest = tmp_path / "proj"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(LorabookError, match="not empty"):
        _new(dest, pairs)
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    assert (dest / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (_new(empty, pairs) / PROJECT_FILE).is_file()


def test_bad_data_write_nothing(tmp_path, pairs):
    good = pairs.read_text()
    pairs.write_text(good + "{not json\n")
    with pytest.raises(LorabookError, match="line 31: not valid JSON"):
        _new(tmp_path / "proj", pairs)
    assert not (tmp_path / "proj").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    pairs.write_text(good)                      # 30 samples, floor 1,000
    with pytest.raises(LorabookError, match="fewer than min_samples"):
        S.new_project(tmp_path / "proj", pairs, echo=None)
    with pytest.raises(LorabookError, match="min_samples must be a positive"):
        S.new_project(tmp_path / "proj", pairs, min_samples=0, echo=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_the_instruction_goes_into_the_projects_config(tmp_path, pairs, monkeypatch):
    told = "Answer this letter as its editor would: {prompt}"
    dest = _new(tmp_path / "proj", pairs, instruction=told)
    monkeypatch.chdir(dest / "book")
    cfg = load_config("tiny")
    assert cfg.instruction == told
    with pytest.raises(LorabookError, match="instruction must be a non-empty"):
        _new(tmp_path / "bad", pairs, instruction="  ")
    assert not (tmp_path / "bad").exists()


def test_makefile_and_readme(tmp_path, pairs):
    dest = _new(tmp_path / "proj", pairs)
    make = (dest / "Makefile").read_text()
    bin_dir = Path(sys.executable).absolute().parent
    assert f"BIN   := {bin_dir}" in make
    for target in ("book: run html pdf", "run:", "html:", "pdf:"):
        assert f"\n{target}" in make
    assert '"$(BIN)/lorabook" train' in make and '"$(BIN)/lorabook" evaluate' in make
    assert '"$(BIN)/jupyter-book" build book --builder pdflatex' in make
    assert "LD_PRELOAD" in make
    readme = (dest / "README.md").read_text()
    assert "make book" in readme and "data/README.md" in readme
    assert "author" in readme and f"{bin_dir}/jupyter-book build book" in readme
    # 30 samples are fewer than the default preset draws: said, not fatal.
    assert "up to n_train=1024" in readme and "all of each is used" in readme


def test_cli_new(tmp_path, pairs, capsys):
    dest = tmp_path / "proj"
    assert cli.main(["new", str(dest), "--data", str(pairs), "--min-samples", "10",
                     "--name", "Jane Doe", "--group-column", "none"]) == 0
    out = capsys.readouterr().out
    assert f"next: cd {dest} && make book" in out and "lorabook.yaml" in out
    assert yaml.safe_load((dest / "_config.yml").read_text())["author"] == "Jane Doe"
    assert cli.main(["new", str(dest), "--data", str(pairs),
                     "--min-samples", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err and "Traceback" not in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n[1, 2]\n')
    assert cli.main(["new", str(tmp_path / "p2"), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "line 2" in err
    assert not (tmp_path / "p2").exists()
    assert cli.main(["new", str(tmp_path / "p3"), "--data", str(pairs),
                     "--min-samples", "10", "--text-column", "nope"]) == 2
    assert "text column 'nope' not found" in capsys.readouterr().err
