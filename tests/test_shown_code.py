"""What the PDF prints runs as printed: every name a shown code cell of a
chapter uses is defined by a shown cell before it (or is a builtin), never
only by a hidden one."""
import ast
import builtins
import re

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


def undefined_in_shown_cells(text: str) -> list[tuple[str, list[str]]]:
    """(first line of the cell, names) for each shown cell of a MyST
    notebook that uses a name no earlier shown cell (nor itself) binds."""
    shown, out = set(), []
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


def test_every_shown_cell_runs_on_what_is_shown():
    bad = {p.name: u for p in sorted((REPO_ROOT / "book").glob("*.md"))
           if (u := undefined_in_shown_cells(p.read_text()))}
    assert not bad, bad


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


def test_every_helper_of_a_listing_is_described():
    """The appendix table names each lorabook function a printed listing
    calls without printing it, with a docstring sentence for each."""
    from lorabook.book.listings import helper_rows, shown_listings
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
    from lorabook.book.listings import helper_rows
    rows = {r["helper"]: r for r in helper_rows(tmp_path)}
    assert "train.micro_batch" not in rows           # printed by the first
    assert rows["train.eval_every"]["called_by"] == "training_arguments"
    assert rows["train.eval_every"]["does"].startswith("Steps between")
