"""Two-process data-parallel training on the CPU (gloo), tiny model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorabook.config import REPO_ROOT

pytestmark = pytest.mark.slow


def test_torchrun_two_processes_only_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", LORABOOK_PRESET="tiny")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lorabook",
         "train", "--preset", "tiny", "--output-dir", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["best_val_loss"] is not None
    adapters = list(out.rglob("adapter_model.safetensors"))
    # One final adapter, written once (checkpoints hold their own copies).
    assert [a for a in adapters if a.parent.name == "adapter"] == [out / "adapter" / "adapter_model.safetensors"]
    assert not list(tmp_path.glob("ddp.old-*"))      # no rank moved a dir
    # Both ranks printed the final metrics JSON; only rank 0 wrote files.
    assert proc.stdout.count('"best_val_loss"') == 2
