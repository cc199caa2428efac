"""The provenance appendix's table of adapted code matches the code: every
place it lists carries an `# Adapted from` comment, and every such comment
is in a place it lists (book/A2_provenance.md, "Reused code")."""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from lorabook.config import REPO_ROOT

SRC = REPO_ROOT / "src" / "lorabook"
APPENDIX = REPO_ROOT / "book" / "A2_provenance.md"
MARK = "Adapted from"


def table_rows() -> list[tuple[str, list[str]]]:
    """(module path under src/lorabook/, [names]) for each row of the
    appendix's list-table, read from its first column:
    "`model.py`: `lora_config`, `add_lora`"."""
    text = APPENDIX.read_text()
    m = re.search(r"^:::\{list-table\}.*?\n(.*?)^:::$", text, re.S | re.M)
    assert m, "no list-table in the provenance appendix"
    rows = re.split(r"^\* - ", m.group(1), flags=re.M)[1:]
    out = []
    for row in rows[1:]:                           # rows[0]: the header row
        where = row.split("\n  - ", 1)[0]       # the first cell (may wrap)
        names = re.findall(r"`([^`]+)`", where)
        assert names and names[0].endswith(".py"), where
        out.append((names[0], names[1:]))
    return out


def _definitions(path: Path):
    """Module-level and nested defs: name -> (node, first line, last line),
    the first line being that of the comment block right above the def (or
    its decorators); and the line numbers of the module's MARK comments."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    defs = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                             ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            while start > 1 and lines[start - 2].lstrip().startswith("#"):
                start -= 1
            defs.setdefault(node.name, (node, start, node.end_lineno))
    marks = [tok.start[0] for tok in tokenize.generate_tokens(
                 io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT and MARK in tok.string]
    return defs, marks


def _spans(defs, name):
    """The lines of `name`, and of the module's own classes and functions
    its body uses by name (the autograd Function a wrapper applies)."""
    node, start, end = defs[name]
    spans = [(start, end)]
    for sub in ast.walk(node):
        if (isinstance(sub, ast.Name) and sub.id in defs and sub.id != name
                and defs[sub.id][0].col_offset == 0):
            spans.append(defs[sub.id][1:])
    return spans


ROWS = table_rows()


def test_the_table_is_read():
    assert len(ROWS) >= 10
    assert ("model.py", ["convert_bundled_model"]) in ROWS


@pytest.mark.parametrize("module, names", ROWS,
                         ids=[f"{m}:{','.join(n)}" for m, n in ROWS])
def test_each_listed_place_is_marked_in_the_code(module, names):
    path = SRC / module
    assert path.is_file(), f"{module}: no such file under src/lorabook/"
    assert names, f"{module}: the row names no function"
    defs, marks = _definitions(path)
    for name in names:
        assert name in defs, f"{module}: no definition named {name}"
        assert any(a <= line <= b for a, b in _spans(defs, name)
                   for line in marks), (
            f"{module}: {name} has no '# {MARK} ...' comment")


def test_each_mark_in_the_code_is_listed():
    listed = {}
    for module, names in ROWS:
        listed.setdefault(module, []).extend(names)
    unlisted = []
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        defs, marks = _definitions(path)
        spans = [s for name in listed.get(module, []) if name in defs
                 for s in _spans(defs, name)]
        unlisted += [f"{module}:{line}" for line in marks
                     if not any(a <= line <= b for a, b in spans)]
    assert not unlisted, ("'# Adapted from' comments in no place the "
                          f"provenance table lists: {unlisted}")
