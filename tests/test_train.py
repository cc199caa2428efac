import math

import pytest
import torch
from safetensors.torch import load_file

from lorabook import model as M
from lorabook import preprocess as P
from lorabook import train as T
from lorabook.book import loop as L
from lorabook.config import LorabookError

pytestmark = pytest.mark.slow


def _batch(cfg, tokenizer, n=4):
    _, _, enc = P.prepare_data(cfg, tokenizer)
    rows = [enc.splits["validation"][i] for i in range(n)]
    feats = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")}
             for r in rows]
    return P.collator(tokenizer)(feats)


def test_training_lowers_loss_and_writes_run(tiny_run):
    m = tiny_run.metrics
    for key in ("n_train", "n_val", "n_test", "epochs", "train_runtime_s",
                "train_tokens_per_s", "base_val_loss", "final_val_loss",
                "best_val_loss"):
        assert key in m
    assert m["n_train"] == 48 and m["epochs"] == 3
    assert m["best_val_loss"] < m["base_val_loss"]
    losses = tiny_run.log_table()["loss"].dropna().tolist()
    assert losses[-1] < losses[0]
    for f in ("config.json", "split.json", "log_history.json", "adapter"):
        assert (tiny_run.path / f).exists()
    assert (tiny_run.adapter_dir / "adapter_model.safetensors").is_file()


def test_finished_run_is_reused(tiny_cfg, tiny_run):
    before = (tiny_run.path / "metrics.json").stat().st_mtime_ns
    again = T.train(tiny_cfg, verbose=False)
    assert (again.path / "metrics.json").stat().st_mtime_ns == before


def test_reload_check_passes_on_the_run_and_fails_on_an_altered_adapter(
        tiny_cfg, tiny_run, tokenizer, tmp_path):
    """train() ran the reload check against the model training left in
    memory; the same check must fail when the saved adapter is altered."""
    import shutil
    from safetensors.torch import load_file, save_file
    assert tiny_run.metrics["reload_max_abs_logit_diff"] <= T.RELOAD_TOLERANCE
    model = M.load_trained_model(tiny_cfg, tiny_run.adapter_dir)
    batch = _batch(tiny_cfg, tokenizer)
    assert T.reload_check(tiny_cfg, model, tiny_run.adapter_dir, batch) == 0.0
    altered = tmp_path / "altered"
    shutil.copytree(tiny_run.adapter_dir, altered)
    f = altered / "adapter_model.safetensors"
    weights = load_file(f)
    key = next(k for k in weights if "lora_B" in k)
    weights[key] = weights[key] * 3 + 0.05
    save_file(weights, f)
    with pytest.raises(LorabookError, match="does not reproduce"):
        T.reload_check(tiny_cfg, model, altered, batch)


def test_merged_export_matches_adapter(tiny_cfg, tiny_run, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM
    out = T.export_merged(tiny_cfg, tiny_run, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out)        # no PEFT
    ref = M.load_trained_model(tiny_cfg, tiny_run.adapter_dir, quantize=False)
    batch = _batch(tiny_cfg, tokenizer)
    with torch.no_grad():
        diff = (plain(**batch).logits - ref(**batch).logits).abs().max().item()
    assert diff < 1e-4


def test_resume_after_interruption_matches(tiny_cfg, tiny_run, tmp_path,
                                           monkeypatch):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kw):
            if state.epoch >= 2:   # the epoch-1 checkpoint exists by now
                raise KeyboardInterrupt

    cfg = tiny_cfg.replace(output_dir=str(tmp_path / "interrupted"))
    # Interrupt the run at the end of epoch 2 (after epoch 1 was saved).
    import transformers
    orig_init = transformers.Trainer.__init__

    def init(self, *a, callbacks=None, **kw):
        orig_init(self, *a, callbacks=(callbacks or []) + [Crash()], **kw)
    monkeypatch.setattr(transformers.Trainer, "__init__", init)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, verbose=False)
    monkeypatch.setattr(transformers.Trainer, "__init__", orig_init)
    assert not (cfg.resolve(cfg.output_dir) / "metrics.json").exists()

    resumed = T.train(cfg, resume=True, verbose=False)
    assert resumed.metrics["resumed"] is True
    a = load_file(tiny_run.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert resumed.metrics["best_val_loss"] == pytest.approx(
        tiny_run.metrics["best_val_loss"], abs=1e-5)


def test_nan_guard_stops_training(tmp_path):
    progress = T.progress_callback(tmp_path / "log.txt", verbose=False)

    class Args:
        learning_rate = 1e-3

    class State:
        global_step = 7
    with pytest.raises(LorabookError, match="loss became nan"):
        progress.on_log(Args(), State(), None, logs={"loss": math.nan})


def test_lean_loop_micro_batches_make_the_same_step(tiny_cfg, tokenizer):
    """LeanLoop steps over two micro-batches move the adapters exactly as
    steps over the whole batch (fp32, no dropout; up to float summation
    order: measured 8.8e-7 on all-linear adapters, against 6e-3 when one
    micro-batch is dropped or counted twice)."""
    cfg = tiny_cfg.replace(load_in_8bit=False, lora_dropout=0.0, bf16=False,
                           warmup_ratio=0.0)
    batch = _batch(cfg, tokenizer, n=4)
    halves = [{k: v[i:i + 2] for k, v in batch.items()} for i in (0, 2)]

    def after(steps):
        model = M.load_model(cfg)
        loss = L.LeanLoop(cfg, model, len(steps)).run(steps)[0][-1]
        return loss, {n: p.detach().clone() for n, p in model.named_parameters()
                      if p.requires_grad}

    loss_full, full = after([[batch], [batch]])     # two steps: A and B both move
    loss_micro, micro = after([halves, halves])
    assert loss_micro == pytest.approx(loss_full, rel=1e-5)
    for name in full:
        torch.testing.assert_close(micro[name], full[name], rtol=1e-5, atol=2e-6)
    # ...and the steps did move them.
    fresh = {n: p for n, p in M.load_model(cfg).named_parameters() if p.requires_grad}
    for part in ("lora_A", "lora_B"):
        assert any(not torch.equal(fresh[n], full[n]) for n in full if part in n)


def test_lean_loop_stops_on_a_non_finite_loss(tiny_cfg, tokenizer):
    cfg = tiny_cfg.replace(load_in_8bit=False)
    model = M.load_model(cfg)
    loop = L.LeanLoop(cfg, model, 1)
    loop.loss = lambda batch, n_items=None: torch.tensor(math.nan, requires_grad=True)
    with pytest.raises(LorabookError, match="loss became nan at step 0"):
        loop.run([[_batch(cfg, tokenizer, n=2)]])


def test_trainer_loss_runs_under_bf16_autocast(tiny_cfg, tokenizer, tmp_path,
                                               monkeypatch):
    """The Trainer's label-only loss bypasses model.forward, which is where
    accelerate puts autocast; with bf16 on, it must still run under it."""
    from transformers import TrainingArguments
    seen = []
    real = T.label_only_loss

    def spy(model, inputs, n=None):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(model, inputs, n)

    monkeypatch.setattr(T, "label_only_loss", spy)
    cfg = tiny_cfg.replace(load_in_8bit=False)
    model = M.load_model(cfg)
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True,
                             report_to=[], label_names=["labels"])
    trainer = T.trainer_class()(model=model, args=args)
    trainer.compute_loss(trainer.model, _batch(cfg, tokenizer, n=2))
    assert seen == [(True, torch.bfloat16)]


@pytest.mark.parametrize("native", [True, False])
def test_both_training_loops_follow_the_bf16_decision(tiny_cfg, tmp_path,
                                                      monkeypatch, native):
    """LeanLoop's autocast and the Trainer's `bf16` come from the same
    decision, pinned here both ways (CPU flags and config) on any CPU."""
    from lorabook.speed import int8cpu
    monkeypatch.setattr(int8cpu, "is_fast_bf16_cpu", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = []

    def spy(model, inputs, n=None):
        seen.append(torch.is_autocast_enabled("cpu"))
        return torch.zeros(())
    monkeypatch.setattr(L, "label_only_loss", spy)
    cfg = tiny_cfg.replace(quant_backend="int8cpu", speed_layer=True, bf16=None)
    for c, want in ((cfg, native), (cfg.replace(bf16=not native), not native)):
        loop = L.LeanLoop(c, torch.nn.Linear(2, 2), 1)
        loop.loss({"input_ids": torch.zeros(1, 2, dtype=torch.long)})
        assert loop.bf16 is want and seen[-1] is want
        assert T.training_arguments(c, tmp_path, 8).bf16 is want


def test_run_has_a_validation_curve_and_a_plain_text_log(tiny_cfg, tiny_run):
    m = tiny_run.metrics
    evals = [r for r in tiny_run.log_history if "eval_loss" in r]
    assert m["n_evaluations"] == len(evals) >= 6
    assert m["eval_every_steps"] == T.eval_every(tiny_cfg, m["n_train"])
    lines = tiny_run.log_text.splitlines()
    assert lines[0].startswith("before training  eval_loss")
    assert sum("eval_loss" in line for line in lines) == len(evals) + 1
    assert lines[-1].startswith(f"step {m['train_steps']:>4}/{m['train_steps']}")


def test_chapter_recipe_equals_lorabook_train(tiny_cfg, tiny_run, tokenizer,
                                              tmp_path):
    """The functions the chapters show and call (load_8bit_model, add_lora,
    fit), run by hand, give train()'s loss curve and adapter."""
    cfg = tiny_cfg.replace(output_dir=str(tmp_path / "by-hand"))
    out = T.run_dir(cfg)
    out.mkdir(parents=True)
    _, _, enc = P.prepare_data(cfg, tokenizer)
    train_ds = enc.splits["train"].remove_columns(["id"])
    val_ds = enc.splits["validation"].remove_columns(["id"])
    model = M.add_lora(cfg, M.load_8bit_model(cfg))
    trainer, result, base = T.fit(cfg, out, model, tokenizer, train_ds,
                                  val_ds, verbose=False)
    assert base == pytest.approx(tiny_run.metrics["base_val_loss"], abs=1e-6)
    mine = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    theirs = [r["loss"] for r in tiny_run.log_history if "loss" in r]
    assert mine == pytest.approx(theirs, abs=1e-5)
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(tiny_run.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def _with_callbacks(monkeypatch, *extra):
    """Every Trainer built while this is patched also gets `extra`."""
    import transformers
    orig_init = transformers.Trainer.__init__

    def init(self, *a, callbacks=None, **kw):
        orig_init(self, *a, callbacks=(callbacks or []) + list(extra), **kw)
    monkeypatch.setattr(transformers.Trainer, "__init__", init)
    return orig_init


def test_resume_skips_the_finished_steps(tiny_cfg, tmp_path, monkeypatch):
    """A run killed just after its step-6 checkpoint, resumed, trains only
    steps 7-18: the global step, the log history and the plain-text log
    continue from the checkpoint instead of starting again at step 0 (a
    retrain from scratch with the same seed would end the same)."""
    import json
    import re
    import transformers
    from transformers import TrainerCallback
    cfg = tiny_cfg.replace(output_dir=str(tmp_path / "killed"))
    assert T.eval_every(cfg, 48) == 3 and T.optimizer_steps(cfg, 48) == 18

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 6:
                raise KeyboardInterrupt

    orig_init = _with_callbacks(monkeypatch, Kill())
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, verbose=False)
    out = T.run_dir(cfg)
    assert not (out / "metrics.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) \
        == ["checkpoint-3", "checkpoint-6"]
    saved = json.loads((out / "checkpoints" / "checkpoint-6" /
                        "trainer_state.json").read_text())["log_history"]
    log_before = (out / "train_log.txt").read_text().splitlines()

    class Steps(TrainerCallback):
        seen = []

        def on_step_end(self, args, state, control, **kw):
            self.seen.append(state.global_step)

    monkeypatch.setattr(transformers.Trainer, "__init__", orig_init)
    _with_callbacks(monkeypatch, Steps())
    run = T.train(cfg, resume=True, verbose=False)
    assert run.metrics["resumed"] is True
    assert Steps.seen == list(range(7, 19))          # steps 1-6 not redone
    assert run.metrics["train_steps"] == 18
    # The history holds the checkpoint's records, then steps 7-18 once.
    assert run.log_history[:len(saved)] == saved
    later = [r["step"] for r in run.log_history[len(saved):] if "loss" in r]
    assert later and min(later) > 6
    loss_steps = [r["step"] for r in run.log_history if "loss" in r]
    assert loss_steps == sorted(set(loss_steps))
    # The plain-text log: the first part kept, steps 7-18 appended once.
    lines = run.log_text.splitlines()
    assert lines[:len(log_before)] == log_before
    steps = [int(m.group(1)) for line in lines
             if (m := re.match(r"step +(\d+)/18", line))]
    n_before = sum(line.startswith("step") for line in log_before)
    assert n_before and all(s <= 6 for s in steps[:n_before])
    assert steps[n_before:] and all(s > 6 for s in steps[n_before:])
    assert steps == sorted(steps) and steps[-1] == 18


def test_trainer_micro_batches_equal_the_full_batch(tiny_cfg, tokenizer,
                                                    tmp_path, monkeypatch):
    """Gradient accumulation through the Trainer (`micro_batch_size` 4 of a
    batch of 8) gives the full batch's loss curve, validation curve and
    adapter: the same samples per step, and each micro-batch's loss
    divided by the whole step's labelled tokens. 8-bit base computing in
    fp32 (pinned: Int8Linear's bf16 products on a native-bf16 CPU round by
    ~1e-2 in the adapter), no dropout, one epoch of 6 steps at a learning
    rate that moves the adapter well beyond the tolerances."""
    from lorabook.speed import int8cpu
    monkeypatch.setattr(int8cpu, "is_fast_bf16_cpu", lambda: False)
    cfg = tiny_cfg.replace(lora_dropout=0.0, bf16=False, epochs=1,
                           learning_rate=0.03, n_evals=3)
    _, _, enc = P.prepare_data(cfg, tokenizer)
    train_ds = enc.splits["train"].remove_columns(["id"])
    val_ds = enc.splits["validation"].remove_columns(["id"])

    def run(c, name):
        out = tmp_path / name
        out.mkdir()
        trainer, result, base = T.fit(c, out, M.load_model(c), tokenizer,
                                      train_ds, val_ds, verbose=False)
        hist = trainer.state.log_history
        return dict(steps=result.global_step, base=base,
                    loss=[(r["step"], r["loss"]) for r in hist if "loss" in r],
                    eval=[(r["step"], r["eval_loss"]) for r in hist
                          if "eval_loss" in r],
                    adapter=load_file(out / "adapter" /
                                      "adapter_model.safetensors"))

    micro_cfg = cfg.replace(micro_batch_size=4)
    args = T.training_arguments(micro_cfg, tmp_path, 48)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    full, micro = run(cfg, "full"), run(micro_cfg, "micro")
    assert full["steps"] == micro["steps"] == 6
    for key in ("loss", "eval"):
        assert [s for s, _ in micro[key]] == [s for s, _ in full[key]]
        assert [v for _, v in micro[key]] == pytest.approx(
            [v for _, v in full[key]], rel=1e-5)
    assert [s for s, _ in full["eval"]] == [2, 4, 6]
    assert full["base"] - full["eval"][-1][1] > 1e-2      # it learned
    assert full["adapter"].keys() == micro["adapter"].keys()
    for k, a in full["adapter"].items():
        # Measured 1e-5; summing per-micro-batch means instead gives 0.3.
        assert (micro["adapter"][k] - a).norm() <= 1e-4 * a.norm(), k


def test_evaluation_settings_keep_the_run_training_settings_do_not(tiny_cfg,
                                                                   tiny_run):
    again = T.finished_run(tiny_cfg.replace(n_generation_prompts=2,
                                            gen_max_new_tokens=5))
    assert again is not None and again.path == tiny_run.path
    assert T.finished_run(tiny_cfg.replace(learning_rate=1e-3)) is None
    assert T.finished_run(tiny_cfg.replace(n_evals=3)) is None


def test_log_line_shows_steps_and_time_left():
    """`make book` prints these lines while it trains: a newcomer sees the
    step, the losses and how long is left."""
    import time
    from types import SimpleNamespace
    state = SimpleNamespace(global_step=32, max_steps=128, epoch=0.5)
    line = T.log_line(state, {"loss": 3.2, "learning_rate": 1e-3},
                      time.time() - 64)
    assert "step   32/128" in line and "loss 3.200" in line
    assert "~3 min left" in line          # 2 s a step, 96 steps to go
    done = SimpleNamespace(global_step=128, max_steps=128, epoch=1.0)
    assert "left" not in T.log_line(done, {"eval_loss": 3.1}, time.time() - 9)
    assert T.log_line(state, {"grad_norm": 1.0}, time.time()) is None


def test_evaluations_land_on_every_epoch_end():
    from lorabook.config import load_config
    for n_train, bs, epochs, n_evals in ((1023, 8, 3, 6), (48, 8, 3, 6),
                                         (100, 8, 4, 5), (37, 4, 3, 20)):
        cfg = load_config("tiny", batch_size=bs, epochs=epochs, n_evals=n_evals)
        per_epoch = -(-n_train // bs)
        assert per_epoch % T.eval_every(cfg, n_train) == 0
    cfg = load_config("tiny", batch_size=8, epochs=3, n_evals=6)
    assert T.eval_every(cfg, 1023) == 64          # 128 steps an epoch, twice
