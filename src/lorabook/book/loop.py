"""A bare training loop for short side-by-side runs (appendix, benchmark).

`lorabook train` and the chapters use the Trainer. The pitfall
demonstrations train pairs of small models on the same batches in the same
order, and the benchmark times single steps; for both this loop does the
Trainer's optimisation and nothing else.
"""
from __future__ import annotations

import math
import time

import torch

from lorabook import model as M
from lorabook import speed
from lorabook.config import Config, LorabookError
from lorabook.speed.label_only import label_only_loss


def length_grouped_batches(lengths: list[int], batch_size: int, *,
                           epochs: int, seed: int) -> list[list[int]]:
    """Indices of every batch of `epochs` epochs, grouped by length as the
    Trainer's `group_by_length` does (epoch e is ordered with seed + e; the
    last batch of an epoch may be short)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler
    batches = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed + epoch)
        order = list(LengthGroupedSampler(batch_size, lengths=lengths,
                                          generator=gen))
        batches += [order[i:i + batch_size]
                    for i in range(0, len(order), batch_size)]
    return batches


def learned_tokens(micro: list[dict]) -> int:
    """Positions whose next token carries a label, over a step's micro-batches
    (the count `label_only_loss` divides by)."""
    return sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)


class LeanLoop:
    """The Trainer's optimisation in a bare loop, for short side-by-side runs.

    AdamW on the trainable (LoRA) parameters with the config's learning rate
    and weight decay, transformers' linear warm-up (`warmup_ratio`) and
    decay, gradients clipped at 1.0, bf16 autocast where lorabook uses it,
    and the LM head only at labelled positions when `label_only_head` is on.
    No evaluation, checkpoints or logs: the benchmark and the trained
    pitfall demonstrations use it, where only speed or a comparison of two
    runs on the same batches matters. `lorabook train` uses the Trainer.

    A step is a list of micro-batches; their losses are each divided by the
    whole step's number of labelled tokens, so the gradients add up to the
    full batch's. The profiler ranges "bench::forward/backward/optimizer"
    are what `benchmarks.harness` reads.
    """

    def __init__(self, cfg: Config, model, total_steps: int):
        from transformers import get_linear_schedule_with_warmup
        self.cfg, self.model = cfg, model
        self.dev, self.bf16 = M.device(), M.use_bf16(cfg)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate,
                                     weight_decay=cfg.weight_decay)
        self.sched = get_linear_schedule_with_warmup(
            self.opt, math.ceil(cfg.warmup_ratio * total_steps), total_steps)

    def loss(self, batch: dict, n_items=None):
        batch = {k: v.to(self.dev) for k, v in batch.items()}
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = None
            if speed.settings(self.cfg).label_only_head:
                loss = label_only_loss(self.model, batch, n_items)
            if loss is None:
                loss = self.model(**batch).loss
        return loss

    def step(self, micro: list[dict], *, advance: bool = True) -> float:
        """One optimizer step over `micro`; returns the step's loss.
        advance=False leaves the learning-rate schedule where it is (a
        profiled extra step)."""
        from torch.profiler import record_function
        n_items = torch.tensor(learned_tokens(micro)) if len(micro) > 1 else None
        total = 0.0
        for batch in micro:
            with record_function("bench::forward"):
                loss = self.loss(batch, n_items)
            with record_function("bench::backward"):
                loss.backward()
            total += loss.item()
        with record_function("bench::optimizer"):
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            if advance:
                self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        return total

    def run(self, steps: list[list[dict]]) -> tuple[list[float], list[float]]:
        """Train on every step in order; return (losses, seconds per step).
        Stops with a clear error as soon as the loss is not finite."""
        self.model.train()
        losses, times = [], []
        for i, micro in enumerate(steps):
            t = time.perf_counter()
            losses.append(self.step(micro))
            times.append(time.perf_counter() - t)
            if not math.isfinite(losses[-1]):
                raise LorabookError(f"loss became {losses[-1]} at step {i}")
        return losses, times
