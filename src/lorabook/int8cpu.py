"""Int8 weight storage for frozen linear layers, fast on the CPU.

bitsandbytes' ``Linear8bitLt`` works on the CPU but casts activations to
float16 and dequantizes through slow generic kernels on every matmul, so
8-bit LoRA trains ~1.7x slower than plain bf16 autocast here. This module
keeps the frozen weights in int8 (one fp32 absmax scale per output row, the
weight half of LLM.int8()) and, inside ``forward``, dequantizes one layer at
a time to bf16 and calls the ordinary (oneDNN/AMX) bf16 matmul. Dequantizing
a 576x1536 matrix costs ~0.15 ms against ~0.5-1 ms for the matmul, so the
layer runs at nearly unquantized-bf16 speed with a quarter of the fp32
weight memory. The backward pass (input gradients only; weights are frozen)
dequantizes again instead of keeping the bf16 copy alive until backward.

An alternative ``mode="int8mm"`` quantizes activations per token and uses
``torch._int_mm``; on this machine the eager quantize/rescale overhead makes it
slower than the fp32 matmul and it adds activation-quantization error, so it
is kept only to be measured (see benchmarks/bench_layers.py).

Use::

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    quantize_model_8bit(model)                 # in place; lm_head/embeddings kept
    model = get_peft_model(model, LoraConfig(target_modules=["q_proj", "v_proj"], ...))
    with torch.autocast("cpu", dtype=torch.bfloat16):   # or Trainer(bf16=True)
        loss = model(**batch).loss

``Int8Linear`` subclasses ``nn.Linear`` so peft's LoRA dispatcher wraps it.
Before ``merge_and_unload`` call ``dequantize_model`` (peft would otherwise add
the LoRA delta into the int8 tensor).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import types
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Int8Linear",
    "linear",
    "quantize_model_8bit",
    "dequantize_model",
    "is_fast_bf16_cpu",
    "default_compute_dtype",
    "model_nbytes",
    "load_quantized",
    "use_fast_cpu_products",
    "bnb_int8_state",
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


# Adapted from bitsandbytes `int8_vectorwise_quant` (LLM.int8(), Dettmers et
# al. 2022, row-wise absmax): same formula, without the outlier-column split
# (outliers only matter for *activation* quantization, which mode="dequant"
# does not do) and with a guard against all-zero rows.
def quantize_rowwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] float -> (int8 [out, in], fp32 scale [out]) with W ~ q * scale."""
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)
    scale = (absmax / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


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


# LORABOOK_ONEDNN=0 turns the oneDNN path off (to measure it, or to avoid it).
ONEDNN_WIDENING = os.environ.get("LORABOOK_ONEDNN", "1") != "0"


def _onednn_takes(dtype: torch.dtype) -> bool:
    """Whether `linear` sends widening products of `dtype` to oneDNN."""
    return ONEDNN_WIDENING and dtype == torch.float32 and _onednn_linear_available()


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``F.linear(x, w, bias)``, faster for widening fp32 products on the CPU.

    PyTorch sends an fp32 ``F.linear`` to MKL's sgemm. For a weight with
    more outputs than inputs (SwiGLU's gate and up projections, the LM head,
    the input gradient of the down projection), oneDNN's matmul primitive
    (the one ``torch.compile`` uses for CPU linears) was faster on a 2-core
    AVX2 CPU: in a training step's profile, 98 against 128 GFLOP/s for the
    gate/up products; for the LM head's 128-row chunks about 50 against 105.
    Whole steps, alternated on and off in one process, have run from 6%
    slower to 7% faster from one benchmark to the next (0.94-1.07x, within
    the machine's drift; `bench._kernel_ab` measures it every time), while
    the LM head's chunks were about twice as fast in every run. Other shapes stay
    with sgemm, which was as fast there. Same product; rounding differs at
    the 1e-6 level (a test checks it).
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
    def forward(ctx, x, qweight, scale, bias, compute_dtype, out_dtype, save_dequantized):
        w = dequantize_rowwise(qweight, scale, compute_dtype)
        y = _linear_in(x, w, bias)
        ctx.x_dtype = x.dtype
        ctx.compute_dtype = compute_dtype
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        if save_dequantized:  # faster backward, but the bf16 copy lives until backward
            ctx.save_for_backward(w, None)
        else:
            ctx.save_for_backward(qweight, scale)
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        a, scale = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            g = grad_out.to(ctx.compute_dtype)
            if scale is not None and a.shape[1] > a.shape[0] and \
                    _onednn_takes(ctx.compute_dtype):
                # grad_x = g @ W widens (e.g. the down projection): W^T as a
                # contiguous weight takes `linear`'s faster path.
                # (Converting the transposed view in one go: half the time
                # of an int8 transpose followed by the conversion.)
                wt = a.t().to(ctx.compute_dtype, memory_format=torch.contiguous_format)
                wt.mul_(scale.to(ctx.compute_dtype))
                grad_x = linear(g, wt).to(ctx.x_dtype)
            else:
                w = a if scale is None else dequantize_rowwise(a, scale, ctx.compute_dtype)
                grad_x = torch.matmul(g, w).to(ctx.x_dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_x, None, None, grad_bias, None, None, None


class _Int8MMLinear(torch.autograd.Function):
    """Forward with dynamic per-token int8 activations and torch._int_mm.

    Backward uses the dequantized weight in the compute dtype (quantizing
    gradients would add more error). Measured slower than mode="dequant".
    """

    @staticmethod
    def forward(ctx, x, qweight, scale, bias, compute_dtype, out_dtype, save_dequantized):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        # Adapted from bitsandbytes `int8_vectorwise_quant` applied to the
        # activations (row-wise = per token), threshold 0 (no outliers).
        sx = (x2.abs().amax(dim=1, keepdim=True) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        xq = torch.round(x2 / sx).clamp_(-127, 127).to(torch.int8)
        m = xq.shape[0]
        if m <= 16:  # _int_mm needs more than 16 rows
            xq = F.pad(xq, (0, 0, 0, 17 - m))
        acc = torch._int_mm(xq, qweight.t())[:m]
        y = acc.float() * sx * scale[None, :]
        if bias is not None:
            y = y + bias.float()
        ctx.x_dtype = x.dtype
        ctx.compute_dtype = compute_dtype
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(qweight, scale)
        return y.reshape(*shape[:-1], -1).to(out_dtype)

    backward = _DequantLinear.backward


class Int8Linear(nn.Linear):
    """Frozen ``nn.Linear`` with int8 row-wise-absmax weights.

    ``weight``: int8 Parameter [out, in], requires_grad=False (an int tensor
    cannot require grad, and peft/optimizers must never touch it).
    ``weight_scale``: fp32 buffer [out]. ``bias``: kept in float, frozen.

    compute_dtype: dtype of the matmul (default: bf16 on CPUs with native
    bf16, else fp32). Under ``torch.autocast`` the autocast dtype wins and the
    output is in that dtype, as for ``nn.Linear``; otherwise the output has
    the input's dtype, so the rest of an fp32 model stays fp32.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, compute_dtype: torch.dtype | None = None,
                 mode: str = "dequant", save_dequantized: bool = False):
        # Skip nn.Linear.__init__: it would allocate and init an fp32 weight.
        nn.Module.__init__(self)
        if mode not in ("dequant", "int8mm"):
            raise ValueError(f"mode must be 'dequant' or 'int8mm', got {mode!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype or default_compute_dtype()
        self.mode = mode
        self.save_dequantized = save_dequantized
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
            requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "Int8Linear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, **kwargs)
        new.set_weight(linear.weight)
        if linear.bias is not None:
            new.bias.data = linear.bias.detach().clone()
        return new

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        q, s = quantize_rowwise(weight)
        self.weight.data = q.to(self.weight.device)
        self.weight_scale = s.to(self.weight.device)

    def reset_parameters(self) -> None:
        # nn.Linear's kaiming init cannot run on int8; quantized weights come
        # from from_linear/set_weight/load_state_dict.
        pass

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_rowwise(self.weight, self.weight_scale, dtype)

    def to_linear(self, dtype: torch.dtype = torch.float32) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=dtype)
        lin.weight.data = self.dequantize(dtype)
        lin.weight.requires_grad_(False)
        if self.bias is not None:
            lin.bias.data = self.bias.detach().to(dtype)
            lin.bias.requires_grad_(self.bias.requires_grad)
        return lin

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # Accept a full-precision checkpoint: quantize instead of truncating
        # floats into the int8 tensor.
        key = prefix + "weight"
        w = state_dict.get(key)
        if w is not None and w.is_floating_point():
            state_dict = dict(state_dict)
            q, s = quantize_rowwise(w)
            state_dict[key] = q
            state_dict.setdefault(prefix + "weight_scale", s)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cached = getattr(self, "_inference_weight", None)
        if cached is not None and not torch.is_grad_enabled() and \
                not torch.is_autocast_enabled(x.device.type):
            # Inside `dequantized_for_inference`: no per-call de-quantization.
            return _linear_in(x, cached, self.bias).to(x.dtype)
        if torch.is_autocast_enabled("cpu") and x.device.type == "cpu":
            compute = out = torch.get_autocast_dtype("cpu")
        else:
            compute, out = self.compute_dtype, x.dtype
        fn = _DequantLinear if self.mode == "dequant" else _Int8MMLinear
        # Our kernels pick dtypes explicitly; autocast must not re-cast inside.
        with torch.autocast("cpu", enabled=False):
            return fn.apply(x, self.weight, self.weight_scale, self.bias,
                            compute, out, self.save_dequantized)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int8 rowwise, compute_dtype={self.compute_dtype}, "
                f"mode={self.mode}")


def quantize_model_8bit(model: nn.Module, skip: Iterable[str] = ("lm_head",),
                        _empty: bool = False, **layer_kwargs) -> nn.Module:
    """Replace every ``nn.Linear`` whose name has no part in ``skip`` by
    ``Int8Linear``, in place, and return the model.

    Embeddings are not Linear and are kept; ``lm_head`` is skipped by default
    (tied to the embeddings in SmolLM2, and the logits are sensitive).
    layer_kwargs go to Int8Linear (compute_dtype, mode, save_dequantized).
    """
    skip = tuple(skip)

    def skipped(name: str) -> bool:
        return any(part in skip for part in name.split("."))

    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, nn.Linear) and not isinstance(mod, Int8Linear)
               and not skipped(name)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if _empty:      # weights come later (load_quantized): don't read them
            new = Int8Linear(mod.in_features, mod.out_features,
                             bias=mod.bias is not None,
                             device=mod.weight.device, **layer_kwargs)
        else:
            new = Int8Linear.from_linear(mod, **layer_kwargs)
        setattr(parent, child, new)
        del mod
    # The skipped layers (the LM head) stay fp32 nn.Linear; they too take
    # `linear`'s faster path for widening products (generation's LM head
    # on 68 rows: 91 -> 44 ms per token here).
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and skipped(name):
            mod.forward = types.MethodType(_plain_linear_forward, mod)
    # Marker for our own code; deliberately NOT `is_loaded_in_8bit`, which
    # would make transformers/peft treat the model as a bitsandbytes model.
    model.int8cpu_quantized = True
    return model


# --------------------------------------------------------------------------
# bitsandbytes' own int8 weights, multiplied the Int8Linear way on the CPU.

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
    # The same product as Int8Linear.forward, from bitsandbytes' codes.
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
        return _DequantLinear.apply(x, codes, scale, self.bias, compute, out, False)


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
    return [m for m in model.modules() if isinstance(m, Int8Linear)
            or getattr(m.__dict__.get("forward"), "__func__", None)
            is _bnb_fast_forward]


def _dequantized(m: nn.Module) -> torch.Tensor:
    if isinstance(m, Int8Linear):
        return m.dequantize(m.compute_dtype)
    codes, scale = bnb_int8_state(m)
    return dequantize_rowwise(codes, scale, m.compute_dtype)


@contextlib.contextmanager
def dequantized_for_inference(model: nn.Module):
    """Within the block, every Int8Linear of `model` multiplies by a weight
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


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Turn every Int8Linear (also inside peft LoRA wrappers) back into an
    ``nn.Linear`` in place, e.g. before peft's ``merge_and_unload``."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, Int8Linear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, mod.to_linear(dtype))
    if hasattr(model, "int8cpu_quantized"):
        model.int8cpu_quantized = False
    return model


def model_nbytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (tied tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


# --------------------------------------------------------------------------
# Loading straight into int8: never hold the full-precision model.

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def read_safetensors(path: str | Path, into: dict | None = None
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from one .safetensors file, one tensor at a time.

    A tensor of `into` (name -> tensor) with the file's dtype and shape is
    read straight into that tensor's memory and yielded itself: no second
    copy of, say, the 113 MB embedding exists while it loads.

    Plain reads instead of a memory map: a mapped file stays resident (and
    counts in the process's RSS) for as long as any tensor views it, which
    with tied or kept weights is for the model's whole life. The format is
    an 8-byte little-endian header length, a JSON header with each tensor's
    dtype, shape and byte range, then the raw data.
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for name, info in sorted(header.items(),
                                 key=lambda kv: kv[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            dtype = _ST_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"{path}: unsupported dtype {info['dtype']} "
                                 f"of {name}")
            f.seek(8 + n + start)
            dest = (into or {}).get(name)
            if dest is not None and dest.dtype == dtype and \
                    list(dest.shape) == list(info["shape"]) and \
                    dest.device.type == "cpu" and dest.is_contiguous() and \
                    dest.numel() * dest.element_size() == end - start > 0:
                f.readinto(memoryview(dest.detach().view(-1).view(torch.uint8).numpy()))
                yield name, dest
                continue
            buf = bytearray(end - start)
            f.readinto(buf)
            t = (torch.frombuffer(buf, dtype=dtype) if buf
                 else torch.empty(0, dtype=dtype))
            yield name, t.reshape(info["shape"])


def load_quantized(path: str | Path, skip: Iterable[str] = ("lm_head",),
                   **layer_kwargs) -> nn.Module | None:
    """A causal LM from a local safetensors checkpoint, quantized while it
    loads: the same model as ``from_pretrained`` + ``quantize_model_8bit``,
    without ever holding the full-precision weights.

    The model is built with allocation but no initialisation (untouched
    pages cost no memory), its Linear layers are swapped for Int8Linear
    before any weight is written, and then the checkpoint is streamed in one
    tensor at a time. Peak memory is the int8 model plus one fp32 tensor,
    instead of the whole fp32 model plus its file mapping.

    Returns None when the directory is not a plain safetensors checkpoint
    whose names match the model (the caller then loads the usual way).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.initialization import no_init_weights
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files or not (path / "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(path)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    quantize_model_8bit(model, skip=skip, _empty=True, **layer_kwargs)
    own = dict(model.named_parameters(remove_duplicate=False))
    own.update(model.named_buffers(remove_duplicate=False))
    modules = dict(model.named_modules())
    # Everything but the weights being quantized is read in place.
    direct = {n: t for n, t in own.items()
              if not (isinstance(modules.get(n.rpartition(".")[0]), Int8Linear)
                      and n.endswith(".weight"))}
    seen = set()
    for f in files:
        for name, t in read_safetensors(f, into=direct):
            if name not in own:
                return None          # renamed keys (old checkpoints): fall back
            mod_name, _, leaf = name.rpartition(".")
            mod = modules.get(mod_name)
            with torch.no_grad():
                if isinstance(mod, Int8Linear) and leaf == "weight":
                    mod.set_weight(t)
                elif t is not own[name]:
                    own[name].copy_(t)
            seen.add(name)
    model.tie_weights()
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    persistent = set(model.state_dict())
    missing = persistent - seen - tied - {n + "_scale" for n in seen}
    if missing:
        return None
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    model.eval()
    return model
