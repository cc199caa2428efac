"""The book's table of contents, written for the corpus it reports on.

One set of chapters serves every dataset. A chapter is one notebook in
`book/`; a section that only some data can support (the State of the
Union's passage cutter, its era judge, ...) is a notebook of its own,
listed as a section of its chapter only when the corpus offers the
feature it needs (`Corpus.features`). The chapter marks where such
sections go with a `{tableofcontents}` directive (one per chapter); they
become subsections of the section that holds it. Jupyter Book builds only
the files its `_toc.yml` lists (`only_build_toc_files: true`), so a section
left out is neither executed nor printed.

`toc_yaml(features)` writes that `_toc.yml`; the repository's own
`_toc.yml` is the one for the State of the Union (a test checks that it
is what `toc_yaml(SOTU.features)` writes), and `lorabook new` writes one
for the user's data.
"""
from __future__ import annotations

# (chapter, [(section, the feature it needs), ...]), in the book's order.
REPORT = (
    ("01_dataset", (("01s_passages", "passages"),)),
    ("02_preparation", (("02s_cleaning", "passages"),)),
    ("03_model", (("03s_recipe", "recipe_sweep"),)),
    ("04_training", ()),
    ("05_evaluation", (("05s_era", "era"), ("05s_contamination", "contamination"))),
)
APPENDICES = (("A1_pitfalls", (("A1s_leakage", "passages"),)), ("A2_provenance", ()))
ROOT = "intro"

HEADER = """\
# Written by lorabook.book.toc for this corpus; do not edit by hand.
# Chapter order: the rubric's parts 1-5, then the appendices. A section
# listed under a chapter is a notebook that only data with what it needs
# get (Corpus.features), printed where the chapter's {tableofcontents}
# stands; Jupyter Book builds only the files named here.
# The book executes its notebooks in the order of their file names: the
# provenance and reproducibility appendix runs last, so its table of wall
# times includes the others.
"""


def _entries(chapters, features) -> list[str]:
    out = []
    for chapter, sections in chapters:
        out.append(f"      - file: {chapter}")
        kept = [s for s, need in sections if need in features]
        if kept:
            out.append("        sections:")
            out.extend(f"          - file: {s}" for s in kept)
    return out


def toc_yaml(features: frozenset[str] | set[str]) -> str:
    """The `_toc.yml` of a book on a corpus with these features."""
    lines = [HEADER.rstrip("\n"), "format: jb-book", f"root: {ROOT}", "parts:",
             "  - caption: The report", "    chapters:",
             *_entries(REPORT, features),
             "  - caption: Appendices", "    chapters:",
             *_entries(APPENDICES, features)]
    return "\n".join(lines) + "\n"


def book_files(features: frozenset[str] | set[str]) -> list[str]:
    """The notebooks such a book holds (without their `.md`), root first."""
    out = [ROOT]
    for chapter, sections in (*REPORT, *APPENDICES):
        out.append(chapter)
        out.extend(s for s, need in sections if need in features)
    return out


def gated_files() -> dict[str, str]:
    """Every section that needs a feature, with that feature."""
    return {s: need for _, sections in (*REPORT, *APPENDICES) for s, need in sections}
