"""Training stage (chapter 4): Trainer, logs, checkpoints, adapter, export.

`train(cfg)` is what both the book and `lorabook train` call. A run
directory (default `runs/default/`) holds everything the run produced; a
finished run whose config matches is reused, so a rebuild of the book or
the evaluation chapter does not retrain.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lorabook import model as M
from lorabook import preprocess as P
from lorabook import speed
from lorabook.config import Config, LorabookError
from lorabook.speed import alloc
from lorabook.speed.label_only import label_only_loss


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate (DDP), or a plain single process.

    Only the main process writes the run directory; the Trainer itself
    already saves checkpoints only there.
    """
    return int(os.environ.get("RANK", "0")) == 0


def write_json(path: Path, obj) -> None:
    """Atomic write: a killed process never leaves half a file."""
    if not is_main_process():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    """The JSON value stored in a file."""
    return json.loads(Path(path).read_text())


def run_dir(cfg: Config) -> Path:
    return cfg.resolve(cfg.output_dir)


# Keys that `run_record` adds to a config's fields in a run's config.json.
RUN_HASH_KEYS = ("hash", "train_hash")


def run_record(cfg: Config) -> dict:
    """What a run's config.json holds: every field, plus the hashes that
    name it (`train_hash` decides whether a finished run is reused)."""
    return dict(cfg.to_dict(), hash=cfg.hash(), train_hash=cfg.train_hash())


@dataclass
class Run:
    """A finished training run, as the chapters display it."""
    path: Path
    config: dict
    metrics: dict
    log_history: list

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def log_text(self) -> str:
        """The plain-text training log, as printed while it trained."""
        p = self.path / "train_log.txt"
        return p.read_text().rstrip() if p.is_file() else ""

    def log_table(self):
        """One row per logging step / evaluation, as a DataFrame."""
        import pandas as pd
        cols = ["step", "epoch", "loss", "eval_loss", "learning_rate",
                "grad_norm"]
        rows = [{k: r.get(k) for k in cols}
                for r in self.log_history if "loss" in r or "eval_loss" in r]
        return pd.DataFrame(rows, columns=cols)


def load_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    if not (path / "metrics.json").is_file():
        raise LorabookError(
            f"{path} holds no finished run (no metrics.json); train first "
            "with `lorabook train`")
    return Run(path, read_json(path / "config.json"),
               read_json(path / "metrics.json"),
               read_json(path / "log_history.json"))


def finished_run(cfg: Config) -> Run | None:
    """The finished run of exactly this config, if there is one."""
    path = run_dir(cfg)
    try:
        run = load_run(path)
    except (LorabookError, FileNotFoundError, json.JSONDecodeError):
        return None
    return run if run.config.get("train_hash") == cfg.train_hash() else None


def log_line(state, logs: dict, t0: float) -> str | None:
    """One plain-text line of the training log, or None for other logs."""
    if "loss" not in logs and "eval_loss" not in logs:
        return None
    if not state.max_steps:        # trainer.evaluate() before training
        parts = ["before training"]
    else:
        parts = [f"step {state.global_step:>4}/{state.max_steps}",
                 f"epoch {logs.get('epoch', state.epoch or 0):4.2f}"]
    for key in ("loss", "eval_loss"):
        if key in logs:
            parts.append(f"{key} {logs[key]:#.4g}")
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    elapsed = time.time() - t0
    parts.append(f"{elapsed:5.0f} s")
    step, total = state.global_step, state.max_steps
    if total and 0 < step < total:
        # Time left at the run's average pace so far (evaluations included).
        left = elapsed / step * (total - step)
        parts.append(f"~{left / 60:.0f} min left" if left >= 60 else
                     "<1 min left")
    return "  ".join(parts)


def progress_callback(log_path: Path, verbose: bool):
    """Trainer callback: the NaN guard, and one plain line per log, printed
    and appended to `log_path` (the log the book shows)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        t0 = time.time()

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            for key in ("loss", "eval_loss", "grad_norm"):
                v = logs.get(key)
                if v is not None and not math.isfinite(v):
                    raise LorabookError(
                        f"training stopped: {key} became {v} at step "
                        f"{state.global_step}. Lower the learning rate "
                        f"(now {args.learning_rate}) or check the data")
            line = log_line(state, logs, self.t0)
            if line is None:
                return
            if verbose:
                print(line, flush=True)
            if is_main_process():
                with open(log_path, "a") as f:
                    f.write(line + "\n")

    return Progress()


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trainer_class():
    """`transformers.Trainer` whose loss skips the LM head where no label
    needs it (`label_only_loss`); everything else is the Trainer's own."""
    # Adapted from the transformers Trainer docs (subclass, override
    # compute_loss): the loss is label_only_loss instead of the model's own.
    from transformers import Trainer

    class LorabookTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False,
                         num_items_in_batch=None):
            # accelerate puts autocast around model.forward, which
            # label_only_loss bypasses: enter it here (bf16 / fp16).
            with self.accelerator.autocast():
                loss = label_only_loss(model, inputs, num_items_in_batch)
            if loss is None:       # not a plain PEFT causal LM: usual path
                return super().compute_loss(model, inputs, return_outputs,
                                            num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

    return LorabookTrainer


def micro_batch(cfg: Config) -> int:
    """Samples per forward pass: `micro_batch_size`, or the whole batch."""
    return cfg.micro_batch_size or cfg.batch_size


def optimizer_steps(cfg: Config, n_train: int) -> int:
    """Optimizer steps of a run: batches per epoch times epochs."""
    return math.ceil(n_train / cfg.batch_size) * cfg.epochs


def eval_every(cfg: Config, n_train: int) -> int:
    """Steps between validation evaluations: about `n_evals` over the run,
    always landing on every epoch's end (the interval divides an epoch's
    steps)."""
    per_epoch = math.ceil(n_train / cfg.batch_size)
    wanted = max(1, cfg.n_evals // cfg.epochs)
    evals = max(j for j in range(1, min(wanted, per_epoch) + 1)
                if per_epoch % j == 0)
    return per_epoch // evals


def n_evaluations(cfg: Config, n_train: int) -> int:
    steps, every = optimizer_steps(cfg, n_train), eval_every(cfg, n_train)
    return steps // every + (1 if steps % every else 0)


def multi_process_sampling() -> dict | None:
    """accelerate's settings under torchrun, None in one process.

    Under torchrun every rank must draw the same epoch order and take its
    shard of it. The length-grouped sampler shuffles with the process's
    global RNG (it has no generator), which dropout moves differently on
    each rank. With the seedable sampler off (it only replaces a
    RandomSampler), accelerate gives the sampler a generator and broadcasts
    rank 0's state to every rank at each epoch. One process keeps the
    defaults, so the book's batch order is unchanged.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return {"use_seedable_sampler": False}
    return None


def device_arguments(cfg: Config) -> dict:
    """The Trainer's settings that depend on the machine: bf16 autocast
    where it pays, fp16 on a GPU without bf16 (a T4), the CPU when there
    is no GPU, and the sampling of several processes
    (`multi_process_sampling`; None in one)."""
    on_gpu = torch.cuda.is_available()
    return dict(bf16=M.use_bf16(cfg), fp16=M.use_fp16(cfg), use_cpu=not on_gpu,
                dataloader_pin_memory=on_gpu,
                accelerator_config=multi_process_sampling())


def training_arguments(cfg: Config, out: Path, n_train: int):
    """The Trainer's settings, every one written out (chapter 3)."""
    # Adapted from the assignment's TrainingArguments example and the PEFT
    # docs: step-based evaluation and saving (n_evals), label_names for PEFT,
    # the best checkpoint restored, mixed precision by device.
    from transformers import TrainingArguments
    steps = eval_every(cfg, n_train)
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=micro_batch(cfg),
        gradient_accumulation_steps=cfg.batch_size // micro_batch(cfg),
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",           # warm up, then decay to 0
        warmup_steps=math.ceil(cfg.warmup_ratio * optimizer_steps(cfg, n_train)),
        weight_decay=cfg.weight_decay,
        # The validation loss and a checkpoint every `steps` optimizer
        # steps; the best and the last kept, the best restored at the end.
        eval_strategy="steps", eval_steps=steps,
        save_strategy="steps", save_steps=steps, save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model="eval_loss",
        greater_is_better=False,
        # Named explicitly: the Trainer's signature lookup missed PEFT
        # models in older transformers (issue 33420): no eval loss.
        label_names=["labels"],
        logging_steps=cfg.logging_steps, logging_first_step=True,
        seed=cfg.seed, data_seed=cfg.seed,
        # Batches of similar length: less padding to compute.
        train_sampling_strategy=("group_by_length" if cfg.group_by_length
                                 else "random"),
        **device_arguments(cfg),              # precision, CPU or GPU
        report_to="none", prediction_loss_only=True,
        disable_tqdm=True,                    # plain log lines instead
    )


def make_trainer(cfg: Config, out: Path, model, tokenizer, train_ds, val_ds,
                 verbose: bool = True):
    """The Trainer of chapter 3: model, arguments, splits, collator."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers import Trainer as PlainTrainer
    # The speed layer's loss (the LM head at labelled positions only), or
    # the Trainer as it is.
    Trainer = (trainer_class() if speed.settings(cfg).label_only_head
               else PlainTrainer)
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, out, len(train_ds)),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=P.make_collator(tokenizer, cfg),
        processing_class=tokenizer,
        callbacks=[progress_callback(out / "train_log.txt", verbose)])
    # One plain line per log (progress_callback), not a dict or a bar.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def allow_ddp_wrap(trainer) -> None:
    """In a multi-process run, let `trainer.train()` wrap the model in
    DistributedDataParallel after an `evaluate()`.

    evaluate() has accelerate prepare the model for evaluation only, which
    still marks it `_is_accelerate_prepared`; train()'s accelerator.prepare
    would then return it as it is (prepare_model's guard against wrapping
    twice), never wrapped, and the ranks' gradients would not be
    all-reduced. Unmarking it lets train() wrap it. One process: no-op.
    """
    if trainer.args.world_size > 1:
        trainer.model.__dict__.pop("_is_accelerate_prepared", None)


def fit(cfg: Config, out: Path, model, tokenizer, train_ds, val_ds, *,
        resume: bool = False, verbose: bool = True):
    """Train and save the adapter; returns (trainer, the result of
    trainer.train(), the base model's validation loss)."""
    # Adapted from the PEFT quicktour's Trainer loop (train, save_pretrained):
    # the base model evaluated first, resume from the last checkpoint.
    trainer = make_trainer(cfg, out, model, tokenizer, train_ds, val_ds, verbose)
    # LoRA's B starts at 0: before training this is the base model.
    base = out / "base_eval.json"
    if base.is_file():
        base_loss = read_json(base)["eval_loss"]
    else:
        base_loss = trainer.evaluate()["eval_loss"]
        write_json(base, {"eval_loss": base_loss})
    allow_ddp_wrap(trainer)          # only when training on several GPUs
    checkpoint = resume and any((out / "checkpoints").glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if checkpoint else None)
    if is_main_process():
        # The best checkpoint is loaded back (load_best_model_at_end).
        model.save_pretrained(out / "adapter")    # safetensors: LoRA only
        tokenizer.save_pretrained(out / "adapter")
    return trainer, result, base_loss


def _shown(cfg: Config, path: Path) -> Path:
    """`path` as printed: relative to the repository when inside it."""
    root = cfg.resolve(".")
    return path.relative_to(root) if path.is_relative_to(root) else path


def train(cfg: Config, *, resume: bool = False, verbose: bool = True,
          force: bool = False) -> Run:
    """Fine-tune the config's model with LoRA; reuse a finished run.

    resume: continue from the last checkpoint of an interrupted run.
    force: train again even if a finished run of this config exists.
    A reused run prints its saved log.
    """
    out = run_dir(cfg)
    if not force and (run := finished_run(cfg)) is not None:
        if verbose:
            print(f"Reusing the finished run in {_shown(cfg, out)}/; its log:")
            print(run.log_text)
        return run
    # Under torchrun only rank 0 touches the directory: another rank that
    # created it first would make rank 0 see an empty "earlier run" here.
    if (out.exists() and any(p.is_file() for p in out.rglob("*"))
            and not resume and is_main_process()):
        old = read_json(out / "config.json") if (out / "config.json").is_file() else {}
        if old.get("train_hash") != cfg.train_hash() or force:
            # Never delete a user's earlier run: move it aside.
            stale = out.with_name(f"{out.name}.old-{old.get('hash', 'unknown')}"
                                  f"-{int(time.time())}")
            os.replace(out, stale)
            if verbose:
                print(f"Moved an earlier run with another config to {stale}")
        else:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            for name in ("train_log.txt", "base_eval.json"):
                (out / name).unlink(missing_ok=True)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", run_record(cfg))

    tokenizer = M.load_tokenizer(cfg)
    splits, report, enc = P.prepare_data(cfg, tokenizer)
    write_json(out / "split.json",
                {k: [s["id"] for s in v] for k, v in splits.items()})
    train_ds = enc.splits["train"].remove_columns(["id"])
    val_ds = enc.splits["validation"].remove_columns(["id"])
    model = M.load_model(cfg)
    had_checkpoints = resume and any((out / "checkpoints").glob("checkpoint-*"))
    if verbose and had_checkpoints:
        print("Resuming from the last checkpoint")
    t0 = time.time()
    trainer, result, base_val_loss = fit(cfg, out, model, tokenizer, train_ds,
                                         val_ds, resume=resume, verbose=verbose)
    wall = time.time() - t0
    # The saved adapter must reproduce the model training left in memory.
    batch = P.make_collator(tokenizer, cfg)(
        [val_ds[i] for i in range(min(4, len(val_ds)))])
    reload_diff = reload_check(cfg, model, out / "adapter", batch)

    history = trainer.state.log_history
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]
    real_tokens = sum(sum(m) for m in train_ds["attention_mask"])
    best = Path(trainer.state.best_model_checkpoint or "").name
    metrics = dict(
        n_train=len(train_ds), n_val=len(val_ds),
        n_test=len(enc.splits["test"]), epochs=cfg.epochs,
        dropped_too_long=enc.dropped, truncated=enc.truncated,
        learned_token_share=enc.learned_share,
        train_real_tokens=real_tokens * cfg.epochs,
        train_runtime_s=result.metrics["train_runtime"],
        train_wall_s=wall,
        train_tokens_per_s=real_tokens * cfg.epochs / result.metrics["train_runtime"],
        train_steps=result.global_step,
        eval_every_steps=trainer.args.eval_steps,
        n_evaluations=len(evals),
        peak_memory_mb=peak_memory_mb(),
        allocator=alloc.active(),
        device=str(M.device()),
        device_name=M.device_description(),
        base_val_loss=base_val_loss,
        final_val_loss=evals[-1] if evals else None,
        best_val_loss=min(evals) if evals else None,
        best_checkpoint=best,
        best_step=int(best.rsplit("-", 1)[-1]) if best else None,
        final_train_loss=result.metrics.get("train_loss"),
        reload_max_abs_logit_diff=reload_diff,
        resumed=bool(had_checkpoints),
    )
    write_json(out / "log_history.json", history)
    write_json(out / "metrics.json", metrics)
    if verbose and is_main_process():
        print(f"Done in {wall:.0f} s; validation loss {base_val_loss:#.4g} -> "
              f"{metrics['best_val_loss']:#.4g}. Run directory: "
              f"{_shown(cfg, out)}/")
    if not is_main_process():
        return Run(out, run_record(cfg), metrics, history)
    return load_run(out)


# A reloaded adapter must give the in-memory model's logits up to float
# rounding; a wrong or partly saved adapter changes them by far more.
RELOAD_TOLERANCE = 1e-3


def reload_check(cfg: Config, model, adapter_dir, batch: dict) -> float:
    """Max |logit difference| between `model` (as training left it) and the
    adapter in `adapter_dir` reloaded onto a fresh 8-bit base. Raises when
    it exceeds RELOAD_TOLERANCE."""
    dev = next(model.parameters()).device
    batch = {k: v.to(dev) for k, v in batch.items()}
    was_training = model.training
    model.eval()
    # The Trainer left its mixed-precision autocast around model.forward;
    # the reloaded model gets the same, so both compute the same products.
    half = (torch.bfloat16 if M.use_bf16(cfg) else torch.float16
            if M.use_fp16(cfg) else None)
    autocast = torch.autocast(dev.type, dtype=half or torch.float32,
                              enabled=half is not None)
    with torch.no_grad(), autocast:
        a = model(**batch).logits.float()
    model.train(was_training)
    if dev.type == "cpu":
        M.release_free_memory()     # training's freed buffers, before a load
    reloaded = M.load_trained_model(cfg, adapter_dir)
    with torch.no_grad(), autocast:
        b = reloaded(**batch).logits.float()
    del reloaded
    diff = (a - b).abs().max().item()
    if not diff <= RELOAD_TOLERANCE:
        raise LorabookError(
            f"the adapter saved in {adapter_dir} does not reproduce the "
            f"trained model (max |logit difference| {diff:.3g} > "
            f"{RELOAD_TOLERANCE:g})")
    return diff


def export_merged(cfg: Config, run: Run, output: str | os.PathLike) -> Path:
    """Merge the adapter into a full-precision base; save a plain checkpoint.

    A quantized base cannot be merged exactly (the merged weight would be
    re-quantized), so the merge happens on an fp32 copy of the base.
    """
    output = Path(output)
    model = M.load_trained_model(cfg, run.adapter_dir, quantize=False)
    merged = model.merge_and_unload()
    merged.save_pretrained(output, safe_serialization=True)
    M.load_tokenizer(cfg).save_pretrained(output)
    return output
