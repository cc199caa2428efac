"""The package's layout: stages import only from the stages before them,
and the speed layer can be switched off."""
import ast
from pathlib import Path

import lorabook

PKG = Path(lorabook.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(parts) or "__init__"] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every lorabook module a file imports, at any depth (lazy imports
    inside functions too), as names relative to the package."""
    found = set()
    mods = _modules()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:                       # from .config import ...
                base = "lorabook." + base
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("lorabook."):
                rel = name[len("lorabook."):]
                if rel in mods:
                    found.add(rel)
    return found


def test_every_module_has_a_layer():
    placed = {m for layer in lorabook.LAYERS for m in layer}
    assert set(_modules()) - {"__init__"} == placed


def test_no_module_imports_a_later_layer():
    layer_of = {m: i for i, layer in enumerate(lorabook.LAYERS) for m in layer}
    bad = []
    for mod, path in _modules().items():
        if mod == "__init__":
            continue
        for dep in _imports(path):
            if layer_of[dep] > layer_of[mod]:
                bad.append(f"{mod} imports {dep}")
    assert not bad, bad


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    """The check above could pass by reading nothing: it must see an
    import inside a function and a relative one."""
    f = tmp_path / "m.py"
    f.write_text("from .config import Config\n"
                 "def g():\n    from lorabook import train as T\n"
                 "    from lorabook.speed import fused\n")
    assert _imports(f) == {"config", "train", "speed", "speed.fused"}


def test_module_sizes():
    """No module over 500 lines; the stages (top-level modules) together
    at most 3,500."""
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert max(sizes.values()) <= 500, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    top = sum(n for m, n in sizes.items() if "." not in m)
    assert top <= 3500, top
