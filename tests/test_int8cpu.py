"""Correctness of lorabook.speed.int8cpu: the fast CPU product on
bitsandbytes' own 8-bit layers against fp32 and against bitsandbytes, the
inference cache, and that LoRA training keeps the frozen weights int8."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lorabook.speed import int8cpu
from lorabook.speed.int8cpu import (bnb_int8_state, dequantized_for_inference,
                                    use_fast_cpu_products)

bnb = pytest.importorskip("bitsandbytes")


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _linear(in_f=256, out_f=192, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f)


def _bnb_layer(lin: nn.Linear, fast: bool = True, compute_dtype=torch.float32):
    """bitsandbytes' Linear8bitLt holding `lin`'s weights (quantized as
    `BitsAndBytesConfig(load_in_8bit=True)` does), optionally switched to
    the fast product; returned inside a Sequential, as in a model."""
    b = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features,
                            bias=lin.bias is not None, has_fp16_weights=False)
    b.load_state_dict(lin.state_dict())
    model = nn.Sequential(b.to("cpu"))
    if fast:
        assert use_fast_cpu_products(model, compute_dtype=compute_dtype) == 1
    return model


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_fast_product_forward_backward_vs_fp32(compute_dtype):
    lin = _linear()
    q = _bnb_layer(lin, compute_dtype=compute_dtype)
    assert q[0].weight.dtype == torch.int8 and not q[0].weight.requires_grad
    x = torch.randn(3, 20, 256, requires_grad=True)
    y_ref = lin(x)
    g = torch.randn_like(y_ref)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    x2 = x.detach().clone().requires_grad_(True)
    y = q(x2)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    (gx,) = torch.autograd.grad(y, x2, g)
    # int8 row-wise weights: ~0.5% relative error; bf16 compute adds ~0.3%.
    assert rel(y, y_ref) < 0.012
    assert rel(gx, gx_ref) < 0.012
    if compute_dtype == torch.float32:     # exactly x @ (codes * scale)^T + b
        codes, scale = bnb_int8_state(q[0])
        w = codes.float() * scale[:, None]
        torch.testing.assert_close(y, nn.functional.linear(x2, w, lin.bias))
        torch.testing.assert_close(gx, g @ w)


def test_fast_product_under_autocast_outputs_bf16_and_grads_fp32():
    q = _bnb_layer(_linear())
    x = torch.randn(4, 256, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


def test_fast_product_not_worse_than_bitsandbytes_with_an_outlier():
    lin = _linear(512, 384)
    x = torch.randn(2, 24, 512)
    x[..., 7] *= 20  # an outlier feature, as in LLM.int8()
    y_ref = lin(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y_bnb = _bnb_layer(lin, fast=False)(x)
    y_fast = _bnb_layer(lin, compute_dtype=torch.bfloat16)(x)
    assert rel(y_bnb, y_ref) < 0.02 and rel(y_fast, y_ref) < 0.02
    assert rel(y_fast, y_ref) < rel(y_bnb, y_ref) + 0.005


def test_8bit_model_logits_near_fp32_and_smaller(tiny_cfg):
    from lorabook import model as M
    ref = M.load_base_model(tiny_cfg, quantize=False).eval()
    q = M.load_base_model(tiny_cfg.replace(quant_backend="int8cpu", speed_layer=True)).eval()
    assert q.lorabook_fast_int8 == 14          # q,k,v,o,gate,up,down x 2
    assert q.get_memory_footprint() < ref.get_memory_footprint()
    ids = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        assert rel(q(ids).logits, ref(ids).logits) < 0.02


def test_dequantized_for_inference_same_outputs_and_freed(tiny_cfg):
    from lorabook import model as M
    model = M.load_base_model(tiny_cfg.replace(quant_backend="int8cpu", speed_layer=True,
                                               bf16=False)).eval()
    for m in model.modules():          # pin fp32 products on any CPU
        if hasattr(m, "compute_dtype"):
            m.compute_dtype = torch.float32
    ids = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        plain = model(ids).logits
        plain_gen = model.generate(ids, max_new_tokens=6, do_sample=False)
        with dequantized_for_inference(model):
            layers = int8cpu._fast_int8_layers(model)
            assert layers and all(m._inference_weight is not None for m in layers)
            cached = model(ids).logits
            cached_gen = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(cached, plain)
    assert torch.equal(cached_gen, plain_gen)
    assert all(m._inference_weight is None for m in layers)   # freed on exit
    # With gradients on, the cache is not used: training still sees int8.
    with dequantized_for_inference(model):
        x = torch.randn(3, layers[0].in_features, requires_grad=True)
        layers[0](x).sum().backward()
        assert x.grad is not None
    # Freed even when the block raises.
    with pytest.raises(RuntimeError):
        with dequantized_for_inference(model):
            raise RuntimeError("boom")
    assert all(m._inference_weight is None for m in layers)


def test_lora_training_keeps_the_bitsandbytes_weights_int8(tiny_cfg):
    from lorabook import model as M
    model = M.load_model(tiny_cfg.replace(quant_backend="int8cpu", speed_layer=True,
                                          lora_dropout=0.0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters()
               if "lora_" in n)
    q_before = {n: b.clone() for n, b in model.state_dict().items()
                if b.dtype == torch.int8}
    assert q_before
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=1e-2)
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (4, 24))
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = model.state_dict()
    for n, b in q_before.items():
        assert after[n].dtype == torch.int8 and torch.equal(after[n], b)


@pytest.mark.parametrize("native", [True, False])
def test_default_compute_dtype_follows_the_bf16_decision(monkeypatch, native):
    """The fast product's default dtype is bf16 exactly where the CPU has
    native bf16 (pinned here both ways, whatever this CPU has)."""
    monkeypatch.setattr(int8cpu, "is_fast_bf16_cpu", lambda: native)
    want = torch.bfloat16 if native else torch.float32
    assert int8cpu.default_compute_dtype() == want
    model = nn.Sequential(_bnb_layer(_linear(64, 32), fast=False)[0])
    use_fast_cpu_products(model)
    assert model[0].compute_dtype == want


@pytest.mark.parametrize("in_f,out_f", [(96, 320), (320, 96)])
@pytest.mark.parametrize("onednn", [True, False])
def test_fp32_products_agree_on_both_paths(in_f, out_f, onednn):
    """Widening products (and the input gradient of narrowing ones) may go
    through oneDNN instead of sgemm: the values must not change beyond
    fp32 rounding, forward and backward."""
    lin = _linear(in_f, out_f)
    q = _bnb_layer(lin)
    codes, scale = bnb_int8_state(q[0])
    w = codes.float() * scale[:, None]
    x = torch.randn(4, 33, in_f, requires_grad=True)
    with int8cpu.onednn_widening(onednn):
        y = q(x)
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, x, g)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = nn.functional.linear(x2, w, lin.bias)
    (gx2,) = torch.autograd.grad(y2, x2, g)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(gx, gx2)


@pytest.mark.parametrize("onednn", [True, False])
def test_linear_takes_onednn_only_for_widening_products_without_grad(
        monkeypatch, onednn):
    """Both routings on any CPU and whatever LORABOOK_ONEDNN says: on, only
    the widening fp32 product goes to oneDNN (bf16 never does); off, none."""
    from torch.profiler import profile

    from lorabook.speed import int8cpu
    if not int8cpu._onednn_linear_available():
        pytest.skip("this PyTorch build has no oneDNN linear")
    monkeypatch.setattr(int8cpu, "ONEDNN_WIDENING", onednn)
    assert int8cpu._onednn_takes(torch.float32) is onednn
    assert int8cpu._onednn_takes(torch.bfloat16) is False
    x = torch.randn(40, 64)
    wide, narrow = torch.randn(200, 64), torch.randn(16, 64)
    with profile() as p:
        y_wide = int8cpu.linear(x, wide)
        int8cpu.linear(x, narrow)
        int8cpu.linear(x.bfloat16(), wide.bfloat16())
    calls = [e.name for e in p.events() if e.name == "mkldnn::_linear_pointwise"]
    assert len(calls) == (1 if onednn else 0)
    torch.testing.assert_close(y_wide, x @ wide.t())
    # With a graph to record, it is F.linear (oneDNN's op has no autograd).
    xg = x.clone().requires_grad_(True)
    int8cpu.linear(xg, wide).sum().backward()
    torch.testing.assert_close(xg.grad, wide.sum(0).expand_as(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_cpu_product_matches_bitsandbytes_forward(tiny_cfg, dtype):
    """use_fast_cpu_products multiplies by bitsandbytes' own codes and scales
    and agrees with bitsandbytes' own forward within 2% relative L2 error.

    Why 2%: bitsandbytes' CPU path casts the input to fp16 and computes
    activation columns above llm_int8_threshold (6.0) apart; our product is
    fp32 (or bf16, ~0.4% rounding) on the same int8 weights. On the real
    model's layer-0 q_proj the two differ by 0.8% in fp32.
    """
    import bitsandbytes as bnb
    from lorabook import model as M
    from lorabook.speed.int8cpu import bnb_int8_state, use_fast_cpu_products
    ref = M.load_base_model(tiny_cfg, backend="bitsandbytes")
    fast = M.load_base_model(tiny_cfg, backend="bitsandbytes")
    n = use_fast_cpu_products(fast, compute_dtype=dtype)
    pairs = [(a, b) for a, b in zip(fast.modules(), ref.modules())
             if isinstance(a, bnb.nn.Linear8bitLt)]
    assert n == len(pairs) > 0
    torch.manual_seed(0)
    for a, b in pairs:
        x = torch.randn(3, 7, a.in_features) * 2
        x[..., 0] = 8.0            # an outlier column above the threshold
        with torch.no_grad():
            y, y_ref = a(x), b(x)
        assert y.dtype == x.dtype
        rel = ((y.float() - y_ref.float()).norm() / y_ref.float().norm()).item()
        assert rel < 0.02, rel
        codes, scale = bnb_int8_state(a)
        assert codes.data_ptr() == a.weight.data_ptr() and codes.dtype == torch.int8
        if dtype == torch.float32:  # exactly x @ (codes * scale)^T
            torch.testing.assert_close(
                y, x @ (codes.float() * scale[:, None]).T, rtol=1e-5, atol=1e-5)
    # Changing a code changes the fast product: it reads bitsandbytes' codes.
    a = pairs[0][0]
    x = torch.randn(2, a.in_features)
    before = a(x).detach().clone()
    a.weight.data[0, :] = 0
    assert not torch.allclose(a(x)[:, 0], before[:, 0])
