"""The helpers that the chapters' listings call but do not print.

A listing is a `literalinclude` of one function (`:pyobject:`). The
functions it calls from lorabook, and that no listing prints, are found
by reading its source (`ast`) and described by the first sentence of
their docstrings, for the table of the reproducibility appendix.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

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
