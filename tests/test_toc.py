"""The table of contents is written for the corpus (lorabook.book.toc)."""
import yaml

from lorabook.book import toc
from lorabook.config import REPO_ROOT
from lorabook.corpus import GENERIC
from lorabook.data import KNOWN_CORPORA
from lorabook.sotu.corpus import SOTU

BOOK = REPO_ROOT / "book"


def _files(tree) -> list[str]:
    out = [tree["root"]]

    def walk(entries):
        for e in entries:
            out.append(e["file"])
            walk(e.get("sections", []))
    for part in tree["parts"]:
        walk(part["chapters"])
    return out


def test_the_committed_toc_is_the_one_written_for_the_state_of_the_union():
    assert (REPO_ROOT / "_toc.yml").read_text() == toc.toc_yaml(SOTU.features)
    assert (BOOK / "_toc.yml").resolve() == (REPO_ROOT / "_toc.yml").resolve()


def test_a_generic_corpus_gets_no_gated_section():
    listed = _files(yaml.safe_load(toc.toc_yaml(GENERIC.features)))
    assert listed == toc.book_files(GENERIC.features)
    assert not set(listed) & set(toc.gated_files())
    # ... and the State of the Union gets every one of them, as sections
    sotu = yaml.safe_load(toc.toc_yaml(SOTU.features))
    assert set(toc.gated_files()) <= set(_files(sotu))
    chapters = sotu["parts"][0]["chapters"]
    assert [s["file"] for s in chapters[0]["sections"]] == ["01s_passages"]


def test_every_listed_notebook_exists_and_every_notebook_is_listed():
    everything = frozenset().union(*(c.features for c in KNOWN_CORPORA))
    listed = set(toc.book_files(everything))
    on_disk = {p.stem for p in BOOK.glob("*.md")}
    assert listed <= on_disk, listed - on_disk
    assert on_disk <= listed, on_disk - listed


def test_every_gated_section_has_a_corpus_that_offers_its_feature():
    offered = set().union(*(c.features for c in KNOWN_CORPORA))
    assert set(toc.gated_files().values()) <= offered


def test_a_chapter_with_gated_sections_says_where_they_go():
    """One {tableofcontents} per chapter that has gated sections: it is
    where they are printed; without it they would trail the chapter."""
    for chapter, sections in toc.REPORT + toc.APPENDICES:
        n = (BOOK / f"{chapter}.md").read_text().count("```{tableofcontents}")
        assert n == (1 if sections else 0), chapter


def test_no_chapter_refers_to_a_label_only_a_gated_section_defines():
    """A book without a gated section must not carry a dangling reference."""
    import re
    gated = toc.gated_files()
    labels = {}
    for f in gated:
        text = (BOOK / f"{f}.md").read_text()
        for label in re.findall(r"^\(([\w-]+)\)=$|:name: ([\w-]+)|name=\"([\w-]+)\"",
                                text, re.M):
            labels[next(x for x in label if x)] = f
    assert labels, "the label reader found nothing"
    for f in toc.book_files(frozenset()):
        text = (BOOK / f"{f}.md").read_text()
        used = set(re.findall(r"\{(?:ref|numref)\}`(?:[^`<]*<)?([\w-]+)>?`", text))
        assert not used & set(labels), (f, used & set(labels))
