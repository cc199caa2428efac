import pytest

from lorabook.cli import main
from lorabook.config import LorabookError, load_config


def test_presets_and_overrides(tmp_path):
    cfg = load_config("tiny")
    assert cfg.preset == "tiny" and cfg.model_name == "tiny-random"
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 4\ntarget_modules: [q_proj]\n")
    cfg = load_config("default", f)
    assert cfg.epochs == 4 and cfg.target_modules == ("q_proj",)
    assert cfg.hash() != load_config("default").hash()


@pytest.mark.parametrize("bad", [
    dict(epochs=0), dict(lora_dropout=1.5), dict(learning_rate=-1),
    dict(batch_size=2.5), dict(padding="left"), dict(max_length=4),
    dict(pad_to_multiple_of=0)])
def test_invalid_hyperparameters_rejected(bad):
    with pytest.raises(LorabookError, match="invalid configuration"):
        load_config("tiny", **bad)


def test_config_file_errors(tmp_path):
    with pytest.raises(LorabookError, match="not found"):
        load_config("tiny", tmp_path / "missing.yaml")
    f = tmp_path / "c.yaml"
    f.write_text("epoch: 3\n")
    with pytest.raises(LorabookError, match="unknown config field"):
        load_config("tiny", f)


def test_cli_error_exit_code(capsys, tmp_path):
    code = main(["data", str(tmp_path / "nope.jsonl"), "--no-tokens"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_cli_data_prints_real_statistics(capsys):
    code = main(["data", "data/sotu_passages.jsonl", "--preset", "tiny"])
    assert code == 0
    out = capsys.readouterr().out
    assert "samples" in out and "tokens: mean" in out and "preview" in out
