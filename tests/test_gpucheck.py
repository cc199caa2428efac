"""The machine check (`make gpu-check`): its CPU side runs here and in CI."""
import json

import pytest

from benchmarks import gpu_check as gpucheck

pytestmark = pytest.mark.slow


def test_cpu_side_trains_scores_generates_and_summarises(tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert gpucheck.main(["--cpu", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["cuda"] is False and s["torch"] and s["bitsandbytes"]
    (r,) = s["results"]
    assert r["layer"] == "bitsandbytes.nn.modules.Linear8bitLt"
    assert r["steps"] > 0 and r["real_tokens_per_s"] > 0
    assert r["test_perplexity"] > 1 and r["reload_max_abs_logit_diff"] == 0.0
    names = [st["stage"] for st in s["stages"]]
    assert names == ["tiny: train", "tiny: reload adapter",
                     "tiny: test perplexity", "tiny: generate"]
    assert "[gpu-check] OK (CPU side only: no CUDA device)" in capsys.readouterr().out


def test_any_failure_exits_non_zero(monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(gpucheck, "check_preset", broken)
    assert gpucheck.main(["--cpu"]) == 1
    assert "[gpu-check] FAILED" in capsys.readouterr().out
