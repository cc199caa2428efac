"""Shared fixtures: the tiny preset, its tokenizer and model (seconds)."""
import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    from lorabook.config import load_config
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return load_config("tiny", output_dir=str(out))


@pytest.fixture(scope="session")
def tokenizer(tiny_cfg):
    from lorabook.model import load_tokenizer
    return load_tokenizer(tiny_cfg)


@pytest.fixture(scope="session")
def tiny_run(tiny_cfg):
    """One finished tiny training run, shared by the tests that read it."""
    from lorabook.train import train
    return train(tiny_cfg, verbose=False)
