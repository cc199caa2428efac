"""Device placement, as far as a CPU can check it: wherever a chapter cell
or a library function feeds a collated batch to a model, the same cell or
function moves that batch to a device first (on a CPU a forgotten `.to`
passes silently and fails only on CUDA)."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEEDS = re.compile(r"\w+\(\*\*(batch|inputs)\)")
MOVES = re.compile(r"(batch|inputs)\s*=\s*\{k:\s*v\.to\(")


def _cells():
    for md in sorted((ROOT / "book").glob("*.md")):
        for i, cell in enumerate(re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```",
                                            md.read_text(), re.S)):
            yield f"{md.name} cell {i}", cell


def _functions():
    for py in sorted((ROOT / "src" / "lorabook").glob("*.py")):
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{py.name}:{node.name}", ast.get_source_segment(
                    py.read_text(), node)


def test_every_batch_fed_to_a_model_is_moved_to_a_device():
    unmoved = [where for where, code in [*_cells(), *_functions()]
               if FEEDS.search(code) and not MOVES.search(code)
               and "Use::" not in code]
    assert not unmoved, f"batches fed to a model without .to(device): {unmoved}"


def test_the_guard_sees_a_forgotten_move():
    bad = "batch = collator(rows)\nout = model(**batch)\n"
    good = "batch = {k: v.to(model.device) for k, v in batch.items()}\n" + bad
    assert FEEDS.search(bad) and not MOVES.search(bad)
    assert MOVES.search(good)
