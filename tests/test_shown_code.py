"""What the PDF prints runs as printed: every name a shown code cell of a
chapter uses is defined by a shown cell before it (or is a builtin), never
only by a hidden one."""
import ast
import builtins
import importlib
import inspect
import re
from pathlib import Path

from lorabook.config import REPO_ROOT

_CELL = re.compile(r"```\{code-cell\}[^\n]*\n(.*?)```", re.S)
_HIDDEN = re.compile(r"^:tags: \[.*remove-(cell|input).*\]", re.M)
# Names IPython gives every notebook.
_NOTEBOOK = {"display", "get_ipython"}


def _bound(tree) -> set[str]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return out


def undefined_in_shown_cells(text: str, before: set[str] = frozenset()
                             ) -> list[tuple[str, list[str]]]:
    """(first line of the cell, names) for each shown cell of a MyST
    notebook that uses a name no earlier shown cell (nor itself) binds;
    `before`: names the reader has already seen bound."""
    shown, out = set(before), []
    for cell in _CELL.findall(text):
        src = "\n".join(l for l in cell.splitlines() if not l.startswith(":"))
        tree = ast.parse(src)
        bound = _bound(tree)
        if _HIDDEN.search(cell):
            continue
        used = {n.id for n in ast.walk(tree)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        missing = sorted(used - shown - bound - set(dir(builtins)) - _NOTEBOOK)
        if missing:
            out.append((src.strip().splitlines()[0], missing))
        shown |= bound
    return out


def shown_before_sections(text: str) -> set[str]:
    """Names the shown cells of a chapter bind before its
    `{tableofcontents}`, where its data-gated sections are printed."""
    head = text.split("```{tableofcontents}", 1)[0]
    names = set()
    for cell in _CELL.findall(head):
        if not _HIDDEN.search(cell):
            names |= _bound(ast.parse(
                "\n".join(l for l in cell.splitlines() if not l.startswith(":"))))
    return names


def test_every_shown_cell_runs_on_what_is_shown():
    """A chapter's cells on what it shows; a data-gated section's (its own
    notebook, printed inside its chapter) also on what the chapter showed
    before it: its hidden setup repeats that, as the chapter showed it."""
    from lorabook.book import toc
    book = REPO_ROOT / "book"
    parent = {s: ch for ch, secs in (*toc.REPORT, *toc.APPENDICES) for s, _ in secs}
    bad = {}
    for p in sorted(book.glob("*.md")):
        before = (shown_before_sections((book / f"{parent[p.stem]}.md").read_text())
                  if p.stem in parent else set())
        if u := undefined_in_shown_cells(p.read_text(), before):
            bad[p.name] = u
    assert not bad, bad


def test_a_section_reads_its_chapters_shown_setup():
    chapter = ("```{code-cell} ipython3\nfrom lorabook import data as D\n```\n"
               "```{tableofcontents}\n```\n"
               "```{code-cell} ipython3\nlate = 1\n```\n")
    section = "```{code-cell} ipython3\nprint(D.load_samples, late)\n```\n"
    before = shown_before_sections(chapter)
    assert before == {"D"}
    assert undefined_in_shown_cells(section, before) == [
        ("print(D.load_samples, late)", ["late"])]


def test_the_reader_of_cells_sees_names_set_only_in_hidden_cells():
    text = ("```{code-cell} ipython3\n:tags: [remove-cell]\nm = 1\n```\n"
            "```{code-cell} ipython3\nprint(m, len([x for x in 'ab']))\n```\n")
    assert undefined_in_shown_cells(text) == [("print(m, len([x for x in 'ab']))", ["m"])]
    shown = text.replace(":tags: [remove-cell]\n", "")
    assert undefined_in_shown_cells(shown) == []


def unused_shown_imports(text: str) -> list[str]:
    """Names a shown cell imports that no shown cell uses: the reader sees
    an import with no purpose (a hidden cell that needs it imports it)."""
    imported, used = {}, set()
    for cell in _CELL.findall(text):
        if _HIDDEN.search(cell):
            continue
        src = "\n".join(l for l in cell.splitlines() if not l.startswith(":"))
        tree = ast.parse(src)
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                for a in n.names:
                    imported.setdefault((a.asname or a.name).split(".")[0],
                                        src.strip().splitlines()[0])
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                used.add(n.id)
    return sorted(set(imported) - used)


def test_no_shown_import_goes_unused():
    bad = {p.name: u for p in sorted((REPO_ROOT / "book").glob("*.md"))
           if (u := unused_shown_imports(p.read_text()))}
    assert not bad, bad


def test_the_reader_of_imports_sees_an_unused_one():
    text = ("```{code-cell} ipython3\nimport time, json\n```\n"
            "```{code-cell} ipython3\n:tags: [remove-cell]\nprint(time.time())\n```\n"
            "```{code-cell} ipython3\nprint(json.dumps(1))\n```\n")
    assert unused_shown_imports(text) == ["time"]


# The lorabook functions that the chapters' listings (a `literalinclude`
# of one function) call without printing them, each with the first
# sentence of its docstring: a reader of a listing can look each one up.
_INCLUDE = re.compile(r"```\{literalinclude\} \.\./src/lorabook/(\S+)\.py\n"
                      r":pyobject: (\w+)")
# Module aliases the listings use (as the chapters import them).
_ALIASES = {"M": "model", "P": "preprocess", "T": "train", "E": "evaluate",
            "D": "data"}


def shown_listings(book_dir: Path) -> list[tuple[str, str, str]]:
    """(chapter file, module, function) of every listing, in book order."""
    out = []
    for md in sorted(Path(book_dir).glob("*.md")):
        for mod, obj in _INCLUDE.findall(md.read_text()):
            out.append((md.name, "lorabook." + mod.replace("/", "."), obj))
    return out


def _called(module: str, obj: str) -> list[tuple[str, str]]:
    """(module, function) of the lorabook functions `obj` calls."""
    mod = importlib.import_module(module)
    node = ast.parse(inspect.getsource(getattr(mod, obj))).body[0]
    found = []
    for n in ast.walk(node):
        f = n.func if isinstance(n, ast.Call) else None
        if isinstance(f, ast.Name) and f.id != obj and inspect.isfunction(
                getattr(mod, f.id, None)):
            target = getattr(mod, f.id)
        elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
              and f.value.id in _ALIASES):
            target = getattr(importlib.import_module(
                "lorabook." + _ALIASES[f.value.id]), f.attr, None)
        else:
            continue
        if inspect.isfunction(target) and target.__module__.startswith("lorabook"):
            found.append((target.__module__, target.__name__))
    return list(dict.fromkeys(found))


def first_sentence(fn) -> str:
    doc = " ".join((inspect.getdoc(fn) or "").split())
    m = re.match(r"(.+?[.!?])(\s|$)", doc)
    return m.group(1) if m else doc


def helper_rows(book_dir: Path) -> list[dict]:
    """One row per helper: its name, the listings that call it, and what
    it does. Helpers that a listing prints are left out."""
    listings = shown_listings(book_dir)
    printed = {(m, o) for _, m, o in listings}
    rows: dict = {}
    for _, module, obj in listings:
        for helper in _called(module, obj):
            if helper in printed:
                continue
            row = rows.setdefault(helper, dict(
                helper=f"{helper[0].removeprefix('lorabook.')}.{helper[1]}",
                called_by=[], does=first_sentence(getattr(
                    importlib.import_module(helper[0]), helper[1]))))
            row["called_by"].append(obj)
    return [dict(r, called_by=", ".join(r["called_by"])) for r in rows.values()]


def test_every_helper_of_a_listing_is_described():
    """Every lorabook function a printed listing calls without printing
    it has a docstring that says what it does."""
    listings = shown_listings(REPO_ROOT / "book")
    assert ("02_preparation.md", "lorabook.model", "load_tokenizer") in listings
    rows = {r["helper"]: r for r in helper_rows(REPO_ROOT / "book")}
    assert "load_tokenizer" in rows["model.resolve_model_path"]["called_by"]
    assert "model.load_tokenizer" not in rows          # printed itself
    empty = [h for h, r in rows.items() if not r["does"]]
    assert not empty, empty


def test_helper_rows_read_the_listing_and_its_calls(tmp_path):
    (tmp_path / "x.md").write_text(
        "```{literalinclude} ../src/lorabook/train.py\n:pyobject: micro_batch\n```\n"
        "```{literalinclude} ../src/lorabook/train.py\n:pyobject: training_arguments\n```\n")
    rows = {r["helper"]: r for r in helper_rows(tmp_path)}
    assert "train.micro_batch" not in rows           # printed by the first
    assert rows["train.eval_every"]["called_by"] == "training_arguments"
    assert rows["train.eval_every"]["does"].startswith("Steps between")
