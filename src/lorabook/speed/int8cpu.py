"""Faster products for bitsandbytes' 8-bit layers on the CPU.

`BitsAndBytesConfig(load_in_8bit=True)` gives every linear layer int8
codes and one absmax scale per output row (the weight half of LLM.int8()).
On the CPU bitsandbytes' own product casts activations to fp16 and runs
generic kernels. `use_fast_cpu_products` keeps the model and its weights
exactly as bitsandbytes made them and changes only the product: each call
de-quantizes one layer's codes to the compute dtype (bf16 on CPUs with
native bf16, else fp32) and runs the ordinary oneDNN/MKL matmul; the
backward pass (input gradients only, the weights are frozen) de-quantizes
again rather than keep the copy alive. `dequantized_for_inference` keeps
one de-quantized copy for a generation loop instead.
"""
from __future__ import annotations

import contextlib
import functools
import os
import types

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "linear",
    "is_fast_bf16_cpu",
    "default_compute_dtype",
    "use_fast_cpu_products",
    "bnb_int8_state",
    "dequantized_for_inference",
]


@functools.lru_cache(maxsize=None)
def is_fast_bf16_cpu() -> bool:
    """True when the CPU has native bf16 matmul (AVX512_BF16 or AMX-BF16).

    oneDNN "supports" bf16 on any AVX512BW CPU, but without these units it
    emulates bf16 and is slower than fp32, so look at the CPU flags.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    if not ({"avx512_bf16", "amx_bf16"} & set(flags)):
        return False
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_compute_dtype() -> torch.dtype:
    return torch.bfloat16 if is_fast_bf16_cpu() else torch.float32


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Multiply in the compute dtype: one pass over a small matrix, no fp32 copy.
    return q.to(dtype).mul_(scale.to(dtype)[:, None])


@functools.lru_cache(maxsize=None)
def _onednn_linear_available() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


# LORABOOK_ONEDNN=0 turns the oneDNN path off (to measure it, or to avoid
# it); `onednn_widening` turns it on or off within a block.
ONEDNN_WIDENING = os.environ.get("LORABOOK_ONEDNN", "1") != "0"


@contextlib.contextmanager
def onednn_widening(enabled: bool):
    """Within the block, `linear` does (or does not) use oneDNN."""
    global ONEDNN_WIDENING
    keep, ONEDNN_WIDENING = ONEDNN_WIDENING, enabled
    try:
        yield
    finally:
        ONEDNN_WIDENING = keep


def _onednn_takes(dtype: torch.dtype) -> bool:
    """Whether `linear` sends widening products of `dtype` to oneDNN."""
    return ONEDNN_WIDENING and dtype == torch.float32 and _onednn_linear_available()


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``F.linear(x, w, bias)``, faster for widening fp32 products on the CPU.

    PyTorch sends an fp32 ``F.linear`` to MKL's sgemm. For a weight with
    more outputs than inputs (SwiGLU's gate and up projections, the LM
    head, the input gradient of the down projection) oneDNN's matmul
    primitive, the one ``torch.compile`` uses for CPU linears, is faster
    (benchmarks/README.md has the measurements). Other shapes stay with
    sgemm. Same product; rounding differs at the 1e-6 level (tested).
    """
    if (x.device.type == "cpu" and x.dtype == w.dtype and _onednn_takes(w.dtype)
            and w.dim() == 2 and w.shape[0] > w.shape[1] and x.dim() >= 2
            and (bias is None or bias.dtype == w.dtype)
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, shape[-1]).contiguous(), w.contiguous(), bias,
            "none", [], "")
        return y.reshape(*shape[:-1], w.shape[0])
    return F.linear(x, w, bias)


def _linear_in(x, w, bias):
    """x @ w^T + bias, computed in w's dtype."""
    b = None if bias is None else bias.to(w.dtype)
    return linear(x.to(w.dtype), w, b)


def _plain_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


class _DequantLinear(torch.autograd.Function):
    """y = x @ dequant(W)^T + b; backward recomputes dequant(W) for dx."""

    @staticmethod
    def forward(ctx, x, qweight, scale, bias, compute_dtype, out_dtype):
        w = dequantize_rowwise(qweight, scale, compute_dtype)
        y = _linear_in(x, w, bias)
        ctx.x_dtype = x.dtype
        ctx.compute_dtype = compute_dtype
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(qweight, scale)
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        codes, scale = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            g = grad_out.to(ctx.compute_dtype)
            if codes.shape[1] > codes.shape[0] and _onednn_takes(ctx.compute_dtype):
                # grad_x = g @ W widens (e.g. the down projection): W^T as a
                # contiguous weight takes `linear`'s faster path.
                # (Converting the transposed view in one go: half the time
                # of an int8 transpose followed by the conversion.)
                wt = codes.t().to(ctx.compute_dtype, memory_format=torch.contiguous_format)
                wt.mul_(scale.to(ctx.compute_dtype))
                grad_x = linear(g, wt).to(ctx.x_dtype)
            else:
                w = dequantize_rowwise(codes, scale, ctx.compute_dtype)
                grad_x = torch.matmul(g, w).to(ctx.x_dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_x, None, None, grad_bias, None, None


# --------------------------------------------------------------------------
# bitsandbytes' own int8 weights, multiplied by _DequantLinear on the CPU.

# Adapted from bitsandbytes' Linear8bitLt (its weight codes CB and row
# absmax SCB, W = CB * SCB / 127): read as they are, multiplied by our own
# de-quantize-then-matmul product instead of its CPU kernel.
def bnb_int8_state(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes [out, in], fp32 row scales [out]) of a bitsandbytes
    ``Linear8bitLt``, so that W ~ codes * scale[:, None].

    bitsandbytes keeps the row absmax as ``weight.SCB`` until the first
    forward call and as ``state.SCB`` afterwards; W = CB * SCB / 127.
    """
    scb = getattr(layer.weight, "SCB", None)
    if scb is None:
        scb = getattr(getattr(layer, "state", None), "SCB", None)
    if scb is None or layer.weight.dtype != torch.int8:
        raise ValueError(f"{type(layer).__name__} holds no int8 weights and scales")
    return layer.weight.data, scb.float() / 127.0


def _bnb_fast_forward(self, x: torch.Tensor) -> torch.Tensor:
    cached = getattr(self, "_inference_weight", None)
    if cached is not None and not torch.is_grad_enabled() and \
            not torch.is_autocast_enabled(x.device.type):
        return _linear_in(x, cached, self.bias).to(x.dtype)
    if torch.is_autocast_enabled("cpu"):
        compute = out = torch.get_autocast_dtype("cpu")
    else:
        compute, out = self.compute_dtype, x.dtype
    codes, scale = bnb_int8_state(self)
    with torch.autocast("cpu", enabled=False):
        return _DequantLinear.apply(x, codes, scale, self.bias, compute, out)


def use_fast_cpu_products(model: nn.Module,
                          compute_dtype: torch.dtype | None = None) -> int:
    """Multiply every bitsandbytes 8-bit layer of `model` lorabook's way.

    The model stays bitsandbytes' own: the same ``Linear8bitLt`` modules,
    int8 codes and row scales that ``BitsAndBytesConfig(load_in_8bit=True)``
    produced, and the same state dict. Only the product changes: instead of
    bitsandbytes' CPU kernel (activations cast to fp16, outlier columns
    split off at ``llm_int8_threshold``), each call de-quantizes the layer's
    codes to the compute dtype (bf16 on CPUs with native bf16, else fp32)
    and runs the ordinary matmul. Returns the number of layers switched.
    """
    from bitsandbytes.nn import Linear8bitLt
    dtype = compute_dtype or default_compute_dtype()
    n = 0
    for mod in model.modules():
        if isinstance(mod, Linear8bitLt) and mod.weight.device.type == "cpu":
            bnb_int8_state(mod)          # fails early on a layer without codes
            mod.compute_dtype = dtype
            mod.forward = types.MethodType(_bnb_fast_forward, mod)
            n += 1
    # The unquantized LM head takes `linear`'s faster path too.
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if type(head) is nn.Linear:
        head.forward = types.MethodType(_plain_linear_forward, head)
    model.lorabook_fast_int8 = n
    return n


def _fast_int8_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if getattr(m.__dict__.get("forward"), "__func__", None)
            is _bnb_fast_forward]


def _dequantized(m: nn.Module) -> torch.Tensor:
    codes, scale = bnb_int8_state(m)
    return dequantize_rowwise(codes, scale, m.compute_dtype)


@contextlib.contextmanager
def dequantized_for_inference(model: nn.Module):
    """Within the block, every 8-bit layer of `model` switched by `use_fast_cpu_products` multiplies by a weight
    de-quantized once on entry instead of on every call (no-grad calls only).

    Generation calls each layer once per new token with a few rows, so
    de-quantizing the whole model per token dominated it on the CPU. The
    cost is one compute-dtype copy of the linear weights while the block
    runs (about 0.4 GB in fp32 for SmolLM2-135M); it is freed on exit. The
    products are the ones the layer computes anyway (same weight values,
    same dtype), so the outputs are unchanged.
    """
    layers = _fast_int8_layers(model)
    try:
        for m in layers:
            m._inference_weight = _dequantized(m)
        yield model
    finally:
        for m in layers:
            m._inference_weight = None


