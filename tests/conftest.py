"""Shared fixtures: the tiny preset, its tokenizer and model (seconds); the
tiny-preset book, built once per session (minutes)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def forced_bf16_cpu():
    """LORABOOK_FORCE_BF16=1 (or 0) makes the whole suite run as on a CPU
    with (without) native bf16: `int8cpu.is_fast_bf16_cpu`, which decides
    bf16 autocast (`model.use_bf16`) and the fast int8 product's compute dtype,
    answers that instead of reading the CPU flags. Read only here, by the
    tests; the library never sees the variable. Tests that test a branch pin
    it themselves (monkeypatch or `Config(bf16=...)`), so the suite must
    pass either way. Subprocesses (bench children, the book build) still
    read the CPU."""
    forced = os.environ.get("LORABOOK_FORCE_BF16")
    if forced not in ("0", "1"):
        yield None
        return
    from lorabook.speed import int8cpu
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8cpu, "is_fast_bf16_cpu", lambda: forced == "1")
        yield forced == "1"


# LORABOOK_SPEED_LAYER=0 runs the suite with the CPU speed layer off in the
# tiny config: plain PEFT + Trainer + bitsandbytes. Tests of the speed layer
# itself turn it on explicitly (`speed_layer=True`).
SPEED_LAYER = os.environ.get("LORABOOK_SPEED_LAYER", "1") != "0"


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    from lorabook.config import load_config
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return load_config("tiny", output_dir=str(out), speed_layer=SPEED_LAYER)


@pytest.fixture(scope="session")
def tokenizer(tiny_cfg):
    from lorabook.model import load_tokenizer
    return load_tokenizer(tiny_cfg)


@pytest.fixture(scope="session")
def tiny_run(tiny_cfg):
    """One finished tiny training run, shared by the tests that read it."""
    from lorabook.train import train
    return train(tiny_cfg, verbose=False)


# The book's PDF is built as `make submission NAME=Doe_Jane` builds it.
BOOK_AUTHOR = "Jane Doe"


@pytest.fixture(scope="session")
def book_build(tmp_path_factory):
    """The whole book with the tiny preset, strict, HTML and PDF: (the
    _build folder, {builder: log}); test_book.py and test_offline_html.py
    read it."""
    from lorabook.config import REPO_ROOT
    from lorabook.report import AUTHOR_ENV
    jb = str(Path(sys.executable).parent / "jupyter-book")
    out = tmp_path_factory.mktemp("book")
    logs = {}
    for builder, extra, env_extra in (
            ("html", [], {}),
            ("pdf", ["--builder", "pdflatex"], {AUTHOR_ENV: BOOK_AUTHOR})):
        env = dict(os.environ, LORABOOK_PRESET="tiny", **env_extra)
        if not env_extra:
            env.pop(AUTHOR_ENV, None)
        # -W: warnings are errors; -n: nitpicky references; allow_errors is
        # false in _config.yml, so a failing cell fails the build.
        proc = subprocess.run(
            [jb, "build", "book", "--path-output", str(out), "-W", "-n",
             "--keep-going", *extra],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        logs[builder] = proc.stdout + proc.stderr
    return out / "_build", logs


@pytest.fixture(scope="session")
def built(book_build):
    return book_build[0]
