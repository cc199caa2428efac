"""The training benchmark on the tiny preset: structure, fairness, profile.

No timing assertions: the benchmark reports speed, the tests check that
both recipes see the same tokens and that the report is complete.
"""
import json
import math
from types import SimpleNamespace

import pytest

from benchmarks import harness as B

STEPS = 2


@pytest.fixture(scope="module")
def bench_cfg(tiny_cfg):
    """The tiny preset with bf16 pinned off: lorabook's recipe then takes
    the fp32 branch (and its oneDNN A/B) on a CPU with native bf16 too."""
    return tiny_cfg.replace(bf16=False)


@pytest.fixture(scope="module")
def result(bench_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return B.run_bench(bench_cfg, steps=STEPS, out_dir=str(out),
                       verbose=False), out


def test_writes_results_with_both_recipes(result, bench_cfg):
    res, out = result
    train_ds = B._encoded(bench_cfg)["train"]
    lengths = [len(x) for x in train_ds["input_ids"]]
    real = [sum(lengths[i] for i in b) for b in B.batch_plan(bench_cfg, STEPS)]
    on_disk = json.loads((out / "results.json").read_text())
    for r in ("reference", "lorabook"):
        assert r in on_disk
        e = on_disk[r]
        assert e["steps"] == STEPS
        assert math.isfinite(e["val_loss"]) and e["val_loss"] > 0
        # The rate and the epoch time follow from the child's own step
        # times and the plan's real tokens (counted here from the encoded
        # lengths), the first step left out.
        assert len(e["step_times_s"]) == STEPS
        assert e["tokens_per_s"] == pytest.approx(
            sum(real[1:]) / sum(e["step_times_s"][1:]), rel=1e-9)
        assert e["seconds_per_epoch"] == pytest.approx(
            sum(lengths) / e["tokens_per_s"], rel=1e-9)
        assert e["real_tokens"] == sum(real)
        # The peak RSS (ru_maxrss, KB -> MB) is at least the RSS the child
        # read from /proc after loading the model (a unit slip fails this).
        assert e["memory"]["after_load"] <= e["peak_rss_mb"] < 64 * 1024
    assert on_disk["machine"]["cpu"] and on_disk["machine"]["torch_threads"] >= 1
    # The widening fp32 products, timed through both kernels, with the
    # tiny model's own sizes.
    k = on_disk["kernels"]
    assert k["mlp_shape"][1:] == [64, 128] and k["lm_head_shape"][2] == 49152
    for name in ("mlp", "lm_head"):
        for kernel in ("sgemm", "lorabook"):
            assert k[f"{name}_{kernel}"] > 0 and math.isfinite(k[f"{name}_{kernel}"])
    # lorabook's steps (fp32: bf16 pinned off), alternating the oneDNN path
    # on and off.
    assert on_disk["lorabook"]["bf16"] is False
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


def test_same_real_tokens_for_both_recipes(result, bench_cfg):
    res, _ = result
    ref, lb = res["reference"], res["lorabook"]
    assert ref["real_tokens"] == lb["real_tokens"] > 0
    assert ref["learned_tokens"] == lb["learned_tokens"]
    assert ref["val_tokens"] == lb["val_tokens"]
    # The reference pads every sample to 256; dynamic padding does less.
    assert ref["computed_tokens"] == STEPS * bench_cfg.batch_size * 256
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


def test_cached_result_is_reused(result, bench_cfg):
    res, out = result
    before = (out / "results.json").stat().st_mtime_ns
    again = B.run_bench(bench_cfg, steps=STEPS, out_dir=str(out), verbose=False)
    assert again["finished"] == res["finished"]
    assert (out / "results.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("bf16", [True, False])
def test_lorabook_recipe_keeps_the_configs_bf16(tiny_cfg, bf16, monkeypatch):
    """Both branches on any CPU: the recipe follows cfg.bf16 whatever the
    CPU, and None still means "where the CPU has native bf16"."""
    from lorabook.speed import int8cpu
    from lorabook import model as M
    for recipe in ("lorabook", "lorabook_unfused", "lorabook_lowmem"):
        rcfg = B.recipe_config(tiny_cfg.replace(bf16=bf16), recipe)
        assert rcfg.bf16 is bf16
        monkeypatch.setattr(int8cpu, "is_fast_bf16_cpu", lambda: not bf16)
        assert M.use_bf16(rcfg) is bf16
    auto = B.recipe_config(tiny_cfg.replace(bf16=None), "lorabook")
    monkeypatch.setattr(int8cpu, "is_fast_bf16_cpu", lambda: bf16)
    assert M.use_bf16(auto) is bf16
    # The reference is the assignment's fp32 recipe on every CPU.
    assert B.recipe_config(tiny_cfg.replace(bf16=True), "reference").bf16 is False


def test_bf16_recipe_skips_the_onednn_ab(tiny_cfg):
    """The other branch of `run_recipe`: under bf16 autocast the widening
    products are not fp32, so there is no oneDNN A/B to time."""
    cfg = tiny_cfg.replace(bf16=True)
    e = B.run_recipe(cfg, "lorabook", B.batch_plan(cfg, 2), profile=True,
                     n_val=4)
    assert e["bf16"] is True and e["kernel_ab"] is None
    assert e["steps"] == 2 and math.isfinite(e["val_loss"])
    assert e["profile"] is not None


@pytest.mark.parametrize("native", [True, False])
def test_machine_info_reports_the_bf16_decision(monkeypatch, native):
    from lorabook.speed import int8cpu
    monkeypatch.setattr(int8cpu, "is_fast_bf16_cpu", lambda: native)
    assert B.machine_info()["native_bf16"] is native


def test_table_utilisation_uses_the_recipes_dtype():
    """A bf16 recipe is measured against the bf16 peak, an fp32 one against
    fp32's, whichever CPU the result came from."""
    def entry(bf16, util):
        return dict(tokens_per_s=1.0, seconds_per_epoch=1.0, peak_rss_mb=1.0,
                    val_loss=1.0, padding_share=0.0, bf16=bf16,
                    utilisation=util)
    util = {"fp32": 0.5, "bf16": 0.25, "int8": 0.125}
    rows = B.table_rows({"reference": entry(False, util),
                         "lorabook": entry(True, util)})
    assert [r["util. of peak"] for r in rows] == ["50.0% fp32", "25.0% bf16"]


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
    # lorabook.speed.fused: the LM head's softmax over the vocabulary belongs to
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
    from lorabook.speed.alloc import tcmalloc_path
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


@pytest.mark.parametrize("fp32_before,fp32_after", [(100.0, 150.0), (150.0, 100.0)])
def test_run_bench_aggregates_the_childrens_numbers(bench_cfg, tmp_path,
                                                    monkeypatch, fp32_before,
                                                    fp32_after):
    """run_bench's own arithmetic on synthetic child results: the fp32
    peak is the better of the two GEMM runs at the recipes' thread count
    (the other dtypes from the first), utilisation is 4 * N * tok/s over
    each peak, speedup and memory ratio are lorabook over reference, and
    recipes that saw different real tokens are refused."""
    calls = []

    def entry(tok_s, rss, val_loss, real=1000):
        return dict(tokens_per_s=tok_s, peak_rss_mb=rss, val_loss=val_loss,
                    real_tokens=real, base_params=1_000_000,
                    seconds_per_epoch=5000 / tok_s, padding_share=0.25,
                    bf16=False, allocator="system", profile=None)

    children = {"reference": entry(10.0, 300.0, 2.5),
                "lorabook": entry(40.0, 100.0, 2.375)}

    def child(kind, spec, timeout=None, allocator="system"):
        calls.append((kind, spec.get("threads"), spec.get("dtypes"), allocator))
        if kind == "gemm" and spec.get("dtypes") == ["fp32"]:
            return {"threads": {"2": {"fp32": fp32_after}}}
        if kind == "gemm":
            return {"threads": {"1": {"fp32": 60.0, "bf16": 70.0, "int8": 80.0},
                                "2": {"fp32": fp32_before, "bf16": 200.0,
                                      "int8": 400.0}}}
        return dict(children[kind])

    monkeypatch.setattr(B, "_child", child)
    monkeypatch.setattr(B, "_threads", lambda: 2)
    monkeypatch.setattr(B, "batch_plan", lambda cfg, steps: [[0, 1]] * steps)
    monkeypatch.setattr(B, "model_shapes", lambda cfg: None)
    monkeypatch.setattr(B, "_applies", lambda cfg, recipe: False)   # no variants
    res = B.run_bench(bench_cfg, steps=2, out_dir=str(tmp_path), verbose=False)
    assert [c[0] for c in calls] == ["gemm", "reference", "lorabook", "gemm"]
    assert calls[0][1] == [1, 2] and calls[3][1:3] == ([2], ["fp32"])
    assert calls[1][3] == "system" and calls[2][3] == "tcmalloc"
    assert res["fp32_peak_runs"] == [fp32_before, fp32_after]
    assert res["peaks"] == {"fp32": 150.0, "bf16": 200.0, "int8": 400.0}
    assert res["speedup"] == pytest.approx(4.0)
    assert res["memory_ratio"] == pytest.approx(1 / 3)
    assert res["val_loss_diff"] == pytest.approx(-0.125)
    # 4 * 1e6 params * 10 tok/s = 4e7 FLOP/s = 0.04 GFLOP/s.
    assert res["reference"]["utilisation"] == pytest.approx(
        {"fp32": 0.04 / 150, "bf16": 0.04 / 200, "int8": 0.04 / 400,
         "useful_gflops": 0.04})
    assert res["lorabook"]["utilisation"]["fp32"] == pytest.approx(0.16 / 150)
    assert json.loads((tmp_path / "results.json").read_text())["speedup"] == \
        pytest.approx(4.0)
    assert "4.00x" in (tmp_path / "results.md").read_text()
    children["lorabook"]["real_tokens"] = 999
    with pytest.raises(RuntimeError, match="different numbers of real tokens"):
        B.run_bench(bench_cfg, steps=2, out_dir=str(tmp_path / "b"),
                    verbose=False)
