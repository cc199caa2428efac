"""Lean autograd for the frozen parts of a LoRA step: same maths, fewer saved tensors.

With LoRA the base model is frozen, yet autograd still keeps every
intermediate its ops *could* need for a weight gradient. Four places hold
most of what a step keeps for the backward pass (benchmarks/README.md has
the measurements); each function below keeps only what its backward really
needs:

* the LM head and its loss (``linear_cross_entropy``): the fp32 logits, the
  log-softmax and the bf16 copy of the 49,152 x 576 head weight. The head
  is frozen, so the gradient of the hidden states can be computed during the
  forward pass, one chunk of positions at a time, and the logits thrown away;
* RMSNorm (``rms_norm``): the fp32 normalised copy; backward recomputes it
  from the input and one saved scalar per position;
* SwiGLU (``silu_mul``): SiLU's output; backward recomputes it;
* LoRA dropout (``DropoutLinear``, ``MaskDropout``): PyTorch's dropout keeps
  its mask in the input's dtype (fp32 here), a bool mask is a quarter of
  that; and each adapter's ``lora_A`` keeps its own dropped-out copy of the
  input, where the input itself, shared by the q and v adapters, will do.

One more is about speed: PyTorch's CPU flash attention is fast forward in
bf16 but slow in its bf16 *backward*, slower than the whole fp32 forward
and backward. ``ATTENTION`` runs the forward in bf16, keeps only q, k, v,
and in backward recomputes the attention in fp32 and takes the fp32
gradient.

``apply(model)`` swaps them into a Llama-family model in place, only where
the module is exactly the transformers class whose maths they reproduce.
Tests in ``tests/test_fused.py`` check values and gradients against the
modules they replace.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from lorabook.speed.int8cpu import linear

__all__ = ["linear_cross_entropy", "rms_norm", "silu_mul", "MaskDropout",
           "DropoutLinear", "ATTENTION", "apply"]


# --------------------------------------------------------------------------
# LM head + cross-entropy

# Adapted from the idea of Liger Kernel's fused linear cross-entropy (logits
# in chunks, gradient taken in the forward pass): plain PyTorch, frozen head.
class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, compute_dtype, chunk, need_grad):
        w = weight.to(compute_dtype)
        acc = torch.promote_types(compute_dtype, torch.float32)   # fp32 or fp64
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        grad = torch.empty_like(hidden) if need_grad else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk].to(compute_dtype)
            t = target[s:s + chunk]
            # As the unfused path: logits in the compute dtype, loss in fp32.
            logits = linear(h, w).to(acc)
            # One softmax pass serves loss and gradient. log-sum-exp comes
            # from the most likely token j: lse = logit_j - log p_j, with
            # p_j >= 1/V, so the log is well conditioned. (exp of a
            # log_softmax is slow: very negative log-probs underflow into
            # denormals.)
            p = torch.softmax(logits, dim=-1)
            p_max, j = p.max(dim=-1)
            lse = logits.gather(1, j[:, None]).squeeze(1) - torch.log(p_max)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            del logits
            if need_grad:
                # d(sum CE)/d logits = softmax - one_hot, then through the head.
                p[torch.arange(len(t), device=t.device), t] -= 1
                grad[s:s + chunk] = (p.to(compute_dtype) @ w).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                         target: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """sum_i CE(hidden_i @ weight^T, target_i) for a *frozen* weight.

    hidden [n, d], weight [V, d], target [n] (no ignore index: pass only the
    positions that carry a label). Under autocast the matmuls run in the
    autocast dtype and the softmax in fp32, as ``F.linear`` + ``.float()`` +
    ``F.cross_entropy`` would; only [n, d] is kept for backward instead of
    several [n, V] tensors.
    """
    if weight.requires_grad:
        raise ValueError("linear_cross_entropy needs a frozen weight")
    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) \
        else weight.dtype
    need_grad = torch.is_grad_enabled() and hidden.requires_grad
    return _LinearCrossEntropy.apply(hidden, weight, target, dtype, chunk, need_grad)


# --------------------------------------------------------------------------
# RMSNorm (transformers' LlamaRMSNorm)

# Adapted from transformers' LlamaRMSNorm (forward) and the standard RMSNorm
# derivative: a hand-written backward that keeps only the input.
class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        gw = None
        if ctx.needs_input_grad[1]:
            gw = (gy * xhat.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        gx = None
        if ctx.needs_input_grad[0]:
            g = (gy * weight).float()
            gx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
            gx = gx.to(x.dtype)
        return gx, gw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's forward; backward saves x and one rstd per row."""
    return _RMSNorm.apply(x, weight, eps)


def _rms_norm_forward(self, hidden_states):
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


# --------------------------------------------------------------------------
# SwiGLU: silu(gate) * up

# Adapted from transformers' LlamaMLP (act(gate) * up): a backward that
# keeps only gate and up and calls PyTorch's silu_backward.
class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, gy):
        gate, up = ctx.saved_tensors
        # The kernels autograd would run for silu(gate) * up, plus one silu.
        d_up = gy * F.silu(gate)
        d_gate = torch.ops.aten.silu_backward(gy * up, gate)
        return d_gate, d_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up; backward recomputes silu instead of keeping it."""
    return _SiluMul.apply(gate, up)


def _mlp_forward(self, x):
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


# --------------------------------------------------------------------------
# Dropout with a bool mask

def keep_mask(shape, p: float, device=None) -> torch.Tensor:
    """Bool tensor, each element True with probability 1 - p (to 1.5e-5).

    Uses 48 of the 63 random bits of each int64 draw as three uniform
    16-bit integers: a third of the generator calls, and none of the float
    conversion, of ``torch.rand(shape) >= p``.
    """
    n = 1
    for d in shape:
        n *= d
    draws = torch.empty((n + 2) // 3, dtype=torch.int64, device=device).random_()
    keep = draws.view(torch.int16).view(-1, 4)[:, :3] >= round(p * 65536) - 32768
    return keep.reshape(-1)[:n].view(shape)


def _check_p(p: float) -> float:
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return p


def _masked(t: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Dropout's product, forward and backward alike: t * mask * scale."""
    return t.mul(mask).mul_(scale)


class _MaskDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        mask = keep_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return _masked(x, mask, scale)

    @staticmethod
    def backward(ctx, gy):
        (mask,) = ctx.saved_tensors
        return _masked(gy, mask, ctx.scale), None


class _DropoutLinear(torch.autograd.Function):
    """``F.linear(dropout(x), weight)`` keeping x, not the dropped-out copy.

    LoRA's q and v adapters read the same input (the layer's normalised
    hidden states), but each drops out its own copy and its ``lora_A``
    keeps that copy for the weight gradient: two fp32 tensors per layer.
    Here each keeps the shared input and its bool mask, and the backward
    pass multiplies the mask in again (the same values, so the same
    gradients). The products are the ones autograd runs for the two
    modules: the input gradient ``gy @ W`` then the mask, the weight
    gradient ``gy^T @ dropout(x)``; under autocast both in the
    autocast dtype, as autocast's linear would.
    """
    @staticmethod
    def forward(ctx, x, weight, p):
        mask = keep_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - p)
        dev = x.device.type
        ctx.dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        ctx.save_for_backward(x, mask, weight)
        ctx.scale = scale
        return F.linear(_masked(x, mask, scale), weight)

    @staticmethod
    def backward(ctx, gy):
        x, mask, weight = ctx.saved_tensors
        dt = ctx.dtype or x.dtype
        g2 = gy.reshape(-1, gy.shape[-1])
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = _masked(g2.mm(weight.to(dt)).to(x.dtype).view(x.shape), mask, ctx.scale)
        if ctx.needs_input_grad[1]:
            xd = _masked(x, mask, ctx.scale).to(dt).reshape(-1, x.shape[-1])
            gw = g2.t().mm(xd).to(weight.dtype)
        return gx, gw, None


class DropoutLinear(nn.Linear):
    """LoRA's ``lora_A`` with its dropout inside (see ``_DropoutLinear``);
    ``fused.apply`` puts it in place of ``nn.Dropout`` + ``lora_A``, on the
    same weight, and leaves an ``nn.Identity`` as the adapter's dropout."""

    def __init__(self, linear: nn.Linear, p: float):
        if linear.bias is not None:
            raise ValueError("DropoutLinear takes a linear layer without bias")
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", None)
        self.p = _check_p(p)
        self.train(linear.training)

    def forward(self, x):
        if not self.training or self.p == 0:
            return F.linear(x, self.weight)
        return _DropoutLinear.apply(x, self.weight, self.p)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dropout={self.p}"


class MaskDropout(nn.Module):
    """``nn.Dropout`` that keeps a bool mask (1 byte per element) for backward."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = _check_p(p)

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return _MaskDropout.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --------------------------------------------------------------------------
# Attention: bf16 forward, fp32 backward

class _AttentionFp32Backward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, dtype, attend):
        low = [t.to(dtype) for t in (q, k, v)]     # what SDPA computes with
        ctx.save_for_backward(*low)
        ctx.dtypes = [t.dtype for t in (q, k, v)]
        ctx.attend = attend
        with torch.no_grad():
            return attend(*low)

    @staticmethod
    def backward(ctx, grad_out):
        with torch.enable_grad(), torch.autocast(grad_out.device.type, enabled=False):
            qkv = [t.detach().float().requires_grad_() for t in ctx.saved_tensors]
            out = ctx.attend(*qkv)
            grads = torch.autograd.grad(out, qkv, grad_out.float())
        return tuple(g.to(d) for g, d in zip(grads, ctx.dtypes)) + (None, None)


ATTENTION = "lorabook_sdpa"


def _attention_forward(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, with the backward described above when
    training in bf16/fp16 on the CPU; otherwise exactly SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def attend(q, k, v):
        return sdpa_attention_forward(module, q, k, v, attention_mask, **kwargs)[0]

    dev = query.device.type
    # Under autocast SDPA runs in the autocast dtype even when RoPE handed
    # it fp32 q and k.
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else query.dtype
    if dev == "cpu" and dtype in (torch.bfloat16, torch.float16) and \
            torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return _AttentionFp32Backward.apply(query, key, value, dtype, attend), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(ATTENTION, _attention_forward)
    # The same masks as "sdpa" (so a causal batch still takes is_causal).
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


# --------------------------------------------------------------------------

def apply(model: nn.Module) -> dict:
    """Swap the lean functions into `model` in place; return what changed.

    Only modules whose forward is exactly transformers' LlamaRMSNorm /
    LlamaMLP (with SiLU) are touched, and only peft LoRA dropouts, so other
    architectures keep their own code. Parameters and state dicts do not
    change.
    """
    from transformers.activations import SiLUActivation
    from transformers.models.llama import modeling_llama as L
    counts = {"rms_norm": 0, "mlp": 0, "lora_dropout": 0, "attention": 0}
    for mod in model.modules():
        config = getattr(mod, "config", None)
        if isinstance(mod, L.LlamaPreTrainedModel) and \
                getattr(config, "_attn_implementation", None) == "sdpa":
            _register_attention()
            config._attn_implementation = ATTENTION   # shared by its layers
            counts["attention"] += 1
        if type(mod).forward is L.LlamaRMSNorm.forward:
            mod.forward = types.MethodType(_rms_norm_forward, mod)
            counts["rms_norm"] += 1
        elif type(mod).forward is L.LlamaMLP.forward and \
                isinstance(mod.act_fn, (nn.SiLU, SiLUActivation)):
            mod.forward = types.MethodType(_mlp_forward, mod)
            counts["mlp"] += 1
        drops = getattr(mod, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            lora_a = getattr(mod, "lora_A", None)
            variants = getattr(mod, "lora_variant", {})
            for k, d in drops.items():
                if type(d) is not nn.Dropout or d.p == 0:
                    continue
                a = lora_a[k] if isinstance(lora_a, nn.ModuleDict) and k in lora_a else None
                if type(a) is nn.Linear and a.bias is None and k not in variants:
                    # peft computes lora_B(lora_A(dropout(x))): the dropout
                    # moves into lora_A, which then keeps x, not its copy.
                    lora_a[k] = DropoutLinear(a, d.p)
                    drops[k] = nn.Identity()
                else:
                    drops[k] = MaskDropout(d.p)
                    drops[k].train(d.training)
                counts["lora_dropout"] += 1
    return counts
