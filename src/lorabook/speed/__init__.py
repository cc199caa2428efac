"""lorabook's CPU speed layer: the same maths as the plain recipe, faster.

The stages run the plain Hugging Face recipe (bitsandbytes' 8-bit model,
PEFT's LoRA, the Trainer). On top of it, and only where `settings` says so,
this package changes how some of that work is computed, never what:

* `int8cpu`: bitsandbytes' own int8 codes and scales multiplied by a
  de-quantize-then-matmul product instead of bitsandbytes' CPU kernel;
* `fused`: lean autograd functions for the frozen parts (RMSNorm, SwiGLU,
  LoRA dropout, the LM head and its loss) that keep fewer tensors;
* `label_only`: the LM head and softmax only at positions with a label;
* `alloc`: tcmalloc for the training process.

One config field, `speed_layer`, turns all of it off: the run is then
plain PEFT + Trainer + bitsandbytes. `settings(cfg)` is the one place the
stages ask what to use.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    int8_products: bool      # lorabook's product on bitsandbytes' codes
    fused_ops: bool          # lean autograd for the frozen parts
    label_only_head: bool    # the LM head only where a label is


def settings(cfg) -> Settings:
    """What of the speed layer a config uses on this machine.

    `cfg.speed_layer = False` turns every part off; otherwise each part
    follows its own field (`quant_backend`, `fused_ops`, `label_only_head`).
    The int8 product is a CPU product: on CUDA bitsandbytes multiplies.
    """
    if not cfg.speed_layer:
        return Settings(False, False, False)
    import torch
    backend = cfg.quant_backend
    if backend == "auto":
        backend = "bitsandbytes" if torch.cuda.is_available() else "int8cpu"
    return Settings(int8_products=cfg.load_in_8bit and backend == "int8cpu",
                    fused_ops=cfg.fused_ops,
                    label_only_head=cfg.label_only_head)
