"""The training benchmark on the tiny preset: structure, fairness, profile.

No timing assertions: the benchmark reports speed, the tests check that
both recipes see the same tokens and that the report is complete.
"""
import json
import math
from types import SimpleNamespace

import pytest

from lorabook import bench as B

STEPS = 2


@pytest.fixture(scope="module")
def result(tiny_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return B.run_bench(tiny_cfg, steps=STEPS, out_dir=str(out),
                       verbose=False), out


def test_writes_results_with_both_recipes(result):
    res, out = result
    on_disk = json.loads((out / "results.json").read_text())
    for r in ("reference", "lorabook"):
        assert r in on_disk
        e = on_disk[r]
        assert e["steps"] == STEPS
        for k in ("tokens_per_s", "seconds_per_epoch", "peak_rss_mb",
                  "val_loss"):
            assert e[k] > 0 and math.isfinite(e[k])
        assert e["utilisation"]["fp32"] > 0
    assert on_disk["speedup"] > 0 and on_disk["memory_ratio"] > 0
    # The fp32 peak is the better of a measurement before and after the recipes.
    runs = on_disk["fp32_peak_runs"]
    assert len(runs) == 2 and on_disk["peaks"]["fp32"] == max(runs) > 0
    assert on_disk["machine"]["cpu"] and on_disk["machine"]["torch_threads"] >= 1
    # The widening fp32 products, timed through both kernels, with the
    # tiny model's own sizes.
    k = on_disk["kernels"]
    assert k["mlp_shape"][1:] == [64, 128] and k["lm_head_shape"][2] == 49152
    for name in ("mlp", "lm_head"):
        for kernel in ("sgemm", "lorabook"):
            assert k[f"{name}_{kernel}"] > 0 and math.isfinite(k[f"{name}_{kernel}"])
    # lorabook's steps, alternating the oneDNN path on and off.
    ab = on_disk["lorabook"]["kernel_ab"]
    assert ab["steps"] == 2 * (STEPS - 1)
    assert ab["onednn"] > 0 and ab["sgemm"] > 0
    assert on_disk["reference"]["kernel_ab"] is None
    md = (out / "results.md").read_text()
    assert "| reference" in md and "| lorabook" in md and "speedup" in md


def test_recipes_are_the_assignments_and_ours(result):
    res, _ = result
    ref, lb = res["reference"], res["lorabook"]
    assert ref["quant_backend"] == "bitsandbytes" and ref["bf16"] is False
    assert ref["gradient_checkpointing"] and not ref["label_only_head"]
    assert lb["quant_backend"] == "int8cpu" and lb["label_only_head"]
    assert not lb["gradient_checkpointing"]


def test_same_real_tokens_for_both_recipes(result, tiny_cfg):
    res, _ = result
    ref, lb = res["reference"], res["lorabook"]
    assert ref["real_tokens"] == lb["real_tokens"] > 0
    assert ref["learned_tokens"] == lb["learned_tokens"]
    assert ref["val_tokens"] == lb["val_tokens"]
    # The reference pads every sample to 256; dynamic padding does less.
    assert ref["computed_tokens"] == STEPS * tiny_cfg.batch_size * 256
    assert lb["computed_tokens"] <= ref["computed_tokens"]


def test_profile_shares_sum_to_one(result):
    res, _ = result
    for r in ("reference", "lorabook"):
        prof = res[r]["profile"]
        assert set(prof["shares"]) == set(B.CATEGORIES)
        assert sum(prof["shares"].values()) == pytest.approx(1, abs=1e-6)
        assert sum(prof["phases"].values()) == pytest.approx(1, abs=1e-6)
        assert prof["shares"]["int8_matmul"] > 0
        assert prof["shares"]["lm_head_loss"] > 0
    # Only the reference re-runs forward modules in its backward pass.
    assert res["reference"]["profile"]["backward_recompute_share"] > 0
    assert res["lorabook"]["profile"]["backward_recompute_share"] == 0


def test_cached_result_is_reused(result, tiny_cfg):
    res, out = result
    before = (out / "results.json").stat().st_mtime_ns
    again = B.run_bench(tiny_cfg, steps=STEPS, out_dir=str(out), verbose=False)
    assert again["finished"] == res["finished"]
    assert (out / "results.json").stat().st_mtime_ns == before


def test_gemm_peaks_are_positive():
    peaks = B.gemm_peaks(128, threads=1, seconds=0.05)
    assert set(peaks) == {"fp32", "bf16", "int8"}
    assert all(v > 0 and math.isfinite(v) for v in peaks.values())
    assert set(B.gemm_peaks(64, threads=1, seconds=0.01, dtypes=("fp32",))) == {"fp32"}


def test_batch_plan_is_deterministic_and_spread(tiny_cfg):
    a = B.batch_plan(tiny_cfg, 3)
    assert a == B.batch_plan(tiny_cfg, 3)
    assert len(a) == 3 and all(len(b) == tiny_cfg.batch_size for b in a)
    flat = [i for b in a for i in b]
    assert len(set(flat)) == len(flat)      # one epoch: no sample twice


def _ev(name, parent=None, t=1.0, shapes=None):
    return SimpleNamespace(name=name, cpu_parent=parent,
                           self_cpu_time_total=t, input_shapes=shapes or [])


def test_profile_categories():
    vocab, r = 1000, 8
    fwd = _ev("bench::forward")
    bwd = _ev("bench::backward")
    head = _ev("bench::lm_head_loss", fwd)
    attn = _ev("bench::attention", fwd)
    q = _ev("bench::int8_matmul", attn)
    events = [
        fwd, bwd, head, attn, q,
        _ev("aten::mm", head, 4),                       # head forward
        _ev("aten::mm", q, 2),                          # 8-bit layer
        _ev("aten::_softmax", attn, 1),                 # attention
        _ev("aten::mm", bwd, 3, [[16, 1000], [1000, 64]]),   # head backward
        _ev("aten::mm", bwd, 1, [[16, 64], [64, 8]]),   # LoRA backward
        _ev("aten::nll_loss_forward", fwd, 1),
        _ev("aten::mul", fwd, 2),
    ]
    # lorabook.fused: the LM head's softmax over the vocabulary belongs to
    # the loss, the fp32 attention backward to attention.
    lce = _ev("_LinearCrossEntropy", fwd, 0.5)
    att_bwd = _ev("_AttentionFp32BackwardBackward", bwd, 0.25)
    events += [lce, _ev("aten::_softmax", lce, 1.5, [[128, 1000]]),
               att_bwd, _ev("aten::copy_", att_bwd, 0.75)]
    p = B.profile_shares(events, vocab, r)
    total = sum(e.self_cpu_time_total for e in events)
    assert p["shares"]["lm_head_loss"] == pytest.approx((4 + 3 + 1 + 1 + 2) / total)
    assert p["shares"]["lora"] == pytest.approx(1 / total)
    assert p["shares"]["int8_matmul"] == pytest.approx(3 / total)
    assert p["shares"]["attention"] == pytest.approx(3 / total)
    assert sum(p["shares"].values()) == pytest.approx(1)


def test_each_recipe_runs_under_its_allocator(result):
    from lorabook.alloc import tcmalloc_path
    res, _ = result
    ours = "tcmalloc" if tcmalloc_path() else "system"
    assert res["reference"]["allocator"] == "system"
    assert res["lorabook"]["allocator"] == ours
    variant = res["variants"].get("reference_tcmalloc")
    if ours == "system":
        assert variant is None
    else:
        # The reference recipe, only the allocator changed.
        assert variant["allocator"] == "tcmalloc"
        assert variant["real_tokens"] == res["reference"]["real_tokens"]
        assert variant["quant_backend"] == "bitsandbytes"
        assert variant["computed_tokens"] == res["reference"]["computed_tokens"]
