"""What a finished tiny run leaves on disk, and how `train` treats an
earlier run: split grouping, the saved adapter, a stale run moved aside."""
import pytest
import torch
from safetensors.torch import load_file

from lorabook import model as M
from lorabook import train as T

pytestmark = pytest.mark.slow


def test_split_keeps_each_address_in_one_split(tiny_cfg, tiny_run):
    """The pipeline passes group_column on: in the real run's split.json no
    address has passages in two splits (a per-sample split would)."""
    from lorabook import data as D
    group = {s["id"]: s["group"] for s in D.load_samples(
        tiny_cfg.resolve(tiny_cfg.data_path), group_column="address",
        min_samples=1)}
    split = T.read_json(tiny_run.path / "split.json")
    groups = {k: {group[i] for i in ids} for k, ids in split.items()}
    assert all(groups.values())
    assert not groups["train"] & groups["validation"]
    assert not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]


def test_saved_adapter_is_the_best_checkpoint_and_trained(tiny_run):
    """The adapter on disk is the checkpoint the metrics name as best (not
    simply the last one), and training moved B away from its zero start."""
    m = tiny_run.metrics
    evals = {r["step"]: r["eval_loss"] for r in tiny_run.log_history
             if "eval_loss" in r}
    assert m["best_val_loss"] == min(evals.values())
    assert evals[m["best_step"]] == m["best_val_loss"]
    saved = load_file(tiny_run.adapter_dir / "adapter_model.safetensors")
    best = tiny_run.path / "checkpoints" / m["best_checkpoint"]
    assert best.is_dir()              # save_total_limit keeps the best
    ckpt = load_file(best / "adapter_model.safetensors")
    assert saved.keys() == ckpt.keys()
    assert all(torch.equal(saved[k], ckpt[k]) for k in saved)
    bs = [v for k, v in saved.items() if "lora_B" in k]
    assert bs and all(v.abs().max() > 0 for v in bs)


def test_stale_run_is_moved_aside_never_deleted(tiny_cfg, tmp_path,
                                                monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"hash": "otherconfig"}')
    (out / "notes.txt").write_text("mine")
    cfg = tiny_cfg.replace(output_dir=str(out))

    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop
    monkeypatch.setattr(M, "load_tokenizer", stop)   # stop before training
    with pytest.raises(Stop):
        T.train(cfg, verbose=False)
    moved, = tmp_path.glob("run.old-otherconfig-*")
    assert (moved / "notes.txt").read_text() == "mine"
    assert (moved / "config.json").is_file()
    assert T.read_json(out / "config.json")["hash"] == cfg.hash()
    assert not (out / "notes.txt").exists()
