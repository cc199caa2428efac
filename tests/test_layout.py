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
    at most 4,000 (3,500 before the contamination stage, memorization.py,
    and the era-stratified scoring were added; 3,650 before report.table's
    PDF column widths and report.wrap; 3,700 before the instructed base
    model's perplexity and the cleaning examples cut at whole words; 3,750
    before the corpus plug-in, corpus.py, took the SOTU branches out of the
    stages; 3,850 before the dataset card, card.py; 4,000 before the
    corpus plug-in took the book's corpus-specific words, reading criteria
    and control texts, and the card its citations; 4,100 before the
    config's instruction, the digest of a saved datasets directory and the
    Trainer's machine settings as one helper, device_arguments; 4,150
    before report.table kept a table whole unless its estimated height,
    table_lines, is over a page)."""
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert max(sizes.values()) <= 500, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    top = sum(n for m, n in sizes.items() if "." not in m)
    assert top <= 4200, top


def test_speed_layer_off_trains_with_plain_peft_trainer_and_bitsandbytes(
        tiny_cfg, tmp_path, monkeypatch):
    """speed_layer=False: bitsandbytes multiplies, no lean autograd, the
    stock Trainer and its loss through model.forward; training still runs
    and learns."""
    import math

    import transformers
    from bitsandbytes.nn import Linear8bitLt

    from lorabook import model as M
    from lorabook import speed
    from lorabook import train as T
    from lorabook.speed import int8cpu
    cfg = tiny_cfg.replace(speed_layer=False, output_dir=str(tmp_path / "plain"))
    assert speed.settings(cfg) == speed.Settings(False, False, False)
    assert M.quant_backend(cfg) == "bitsandbytes" and not M.use_bf16(cfg)
    calls = []
    monkeypatch.setattr(T, "label_only_loss",
                        lambda *a, **k: calls.append(1))
    built = []
    make = T.make_trainer

    def spy(*a, **k):
        built.append(make(*a, **k))
        return built[-1]
    monkeypatch.setattr(T, "make_trainer", spy)
    run = T.train(cfg, verbose=False)
    trainer = built[0]
    assert type(trainer) is transformers.Trainer
    model = trainer.model
    assert any(isinstance(m, Linear8bitLt) for m in model.modules())
    assert int8cpu._fast_int8_layers(model) == []
    assert not getattr(model, "lorabook_fused", False)
    assert calls == []
    m = run.metrics
    assert math.isfinite(m["best_val_loss"]) and m["best_val_loss"] < m["base_val_loss"]
