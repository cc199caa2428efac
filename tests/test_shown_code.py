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
