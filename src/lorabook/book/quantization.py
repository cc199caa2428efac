"""What 8-bit costs and what the CPU product gains (chapter 3)."""
from __future__ import annotations

import time

import torch

from lorabook import evaluate as E
from lorabook import model as M
from lorabook import preprocess as P
from lorabook.config import Config
from lorabook.speed.label_only import label_only_loss


def quantization_cost(cfg: Config, dataset, tokenizer, steps: int = 2) -> list[dict]:
    """What 8-bit costs and what the CPU product gains (chapter 3).

    For the fp32 base, bitsandbytes' 8-bit model with its own product, and
    the same 8-bit model with lorabook's CPU product: the size of the linear
    layers, the perplexity of `dataset`'s responses, the seconds to score
    them, and the median seconds of a LoRA training step (forward and
    backward) on a batch of `cfg.batch_size` of them, after one warm-up.
    """
    collator = P.collator(tokenizer)
    keys = ("input_ids", "attention_mask", "labels")
    batch = collator([{k: dataset[i][k] for k in keys}
                      for i in range(min(cfg.batch_size, len(dataset)))])
    batch = {k: v.to(M.device()) for k, v in batch.items()}
    rows = []
    variants = [(False, None, "fp32")]
    if M.device().type == "cpu":
        variants += [(True, "bitsandbytes", "8-bit, bitsandbytes' product"),
                     (True, "int8cpu", "8-bit, my CPU product")]
    else:
        variants += [(True, "bitsandbytes", "8-bit, bitsandbytes")]
    for quantize, backend, name in variants:
        c = cfg.replace(quant_backend=backend or cfg.quant_backend)
        model = M.load_base_model(c, quantize=quantize, backend=backend)
        linear_mb = sum(
            p.numel() * p.element_size() for n, p in model.named_parameters()
            if n.endswith(".weight") and p.ndim == 2 and "embed" not in n
            and "lm_head" not in n) / 2**20
        t = time.perf_counter()
        sums, counts = E.response_nll(model, dataset, collator, cfg.eval_batch_size)
        score_s = time.perf_counter() - t
        model = M.add_lora(c.replace(lora_dropout=0.0), model)
        model.train()
        times = []
        for _ in range(steps + 1):
            t = time.perf_counter()
            with torch.autocast(M.device().type, dtype=torch.bfloat16,
                                enabled=M.use_bf16(c) and quantize):
                loss = label_only_loss(model, batch)
            loss.backward()
            times.append(time.perf_counter() - t)
        rows.append(dict(weights=name, linear_layers_mb=linear_mb,
                         val_perplexity=E.perplexity(sums.sum(), counts.sum()),
                         score_s=score_s,
                         train_step_s=sorted(times[1:])[len(times[1:]) // 2]))
        del model
    return rows
