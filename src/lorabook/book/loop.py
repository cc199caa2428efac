"""A bare training loop for short side-by-side runs (appendix, benchmark).

`lorabook train` and the chapters use the Trainer. The pitfall
demonstrations train pairs of small models on the same batches in the same
order, and the benchmark times single steps; for both this loop does the
Trainer's optimisation and nothing else.
"""
from __future__ import annotations

import math
import random
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
        self.label_only = speed.settings(cfg).label_only_head
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate,
                                     weight_decay=cfg.weight_decay)
        self.sched = get_linear_schedule_with_warmup(
            self.opt, math.ceil(cfg.warmup_ratio * total_steps), total_steps)

    def loss(self, batch: dict, n_items=None):
        batch = {k: v.to(self.dev) for k, v in batch.items()}
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = None
            if self.label_only:
                loss = label_only_loss(self.model, batch, n_items)
            if loss is None:
                loss = self.model(**batch).loss   # mean over this batch
                if n_items is not None:           # part of a larger step
                    loss = loss * learned_tokens([batch]) / n_items
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


# The trained pitfall comparisons (appendix) train with this loop.


def trained_demo_sizes(cfg: Config) -> dict:
    """Slice sizes of the trained comparisons: about two minutes on a
    2-core CPU for the default preset, seconds for the tiny one. The book
    trains only the EOS pair (`eos_train` samples; `eos_prompts` held-out
    samples are scored); the leakage sizes serve `lorabook`'s tests and
    anyone who reruns `leakage_training_comparison`."""
    if cfg.preset == "tiny":
        return dict(eos_train=32, eos_prompts=8, eos_epochs=2,
                    leak_train=32, leak_test=16, leak_test_groups=2,
                    leak_groups=6, leak_epochs=1)
    return dict(eos_train=96, eos_prompts=64, eos_epochs=1,
                leak_train=96, leak_test=48, leak_test_groups=4,
                leak_groups=12, leak_epochs=1)


def seeded_sample(items, n: int, seed: int):
    """`n` items drawn at random (seeded), kept in their original order;
    `items` is a list or a `datasets.Dataset`. The splits are in corpus
    (chronological) order, so their first items would all be early."""
    idx = sorted(random.Random(seed).sample(range(len(items)),
                                            min(n, len(items))))
    if hasattr(items, "select"):
        return items.select(idx)
    return [items[i] for i in idx]


def train_lora_slice(cfg: Config, dataset, collator, *, epochs: int = 1,
                     seed: int | None = None,
                     eos_token_id: int | None = None):
    """Fresh LoRA adapters on the config's base, trained on `dataset`.

    The recipe of `lorabook train` in `LeanLoop` (the benchmark's loop
    too): the config's base and LoRA settings, AdamW, warm-up and
    decay, clipping, length-grouped batches of `batch_size`, bf16 autocast
    where lorabook uses it, the LM head only at labelled positions. The
    appendix trains pairs of models on small slices, and only their
    comparison matters. The labels are the collator's, so a wrong collator
    trains the wrong way.

    Returns (model in eval mode, info) with info: steps, seconds, seconds
    per step, losses, learned (labelled) tokens and, given `eos_token_id`,
    EOS labels.
    """
    seed = cfg.seed if seed is None else seed
    rows = [{k: dataset[i][k] for k in ("input_ids", "attention_mask",
                                        "labels")}
            for i in range(len(dataset))]
    plan = length_grouped_batches([len(r["input_ids"]) for r in rows],
                                  cfg.batch_size, epochs=epochs, seed=seed)
    batches = [collator([rows[i] for i in b]) for b in plan]
    model = M.load_model(cfg)
    loop = LeanLoop(cfg, model, len(batches))
    torch.manual_seed(seed)                        # LoRA dropout
    t0 = time.perf_counter()
    losses, step_s = loop.run([[b] for b in batches])
    model.eval()
    info = dict(steps=len(batches), seconds=time.perf_counter() - t0,
                step_s=step_s, losses=losses, samples=len(rows),
                learned_tokens=int(sum((b["labels"] != -100).sum()
                                       for b in batches)))
    if eos_token_id is not None:
        info["eos_labels"] = int(sum((b["labels"] == eos_token_id).sum()
                                     for b in batches))
    return model, info
