"""Training benchmark (`make bench`, benchmarks/README.md): reference vs lorabook.

Trains, side by side and each in its own subprocess (so that its peak RSS is
its own), the assignment's recipe and lorabook's default recipe on the same
model, the same training batches in the same order and so the same number
of real (non-padding) tokens:

* reference: bitsandbytes 8-bit base, `prepare_model_for_kbit_training`
  with its defaults (gradient checkpointing on), every sample padded to
  256 tokens, fp32 compute, the model's own loss over all positions;
* lorabook: bitsandbytes' 8-bit base multiplied by `speed.int8cpu`, bf16 autocast (where the CPU has it),
  LM head only at labelled positions, dynamic padding of length-grouped
  batches, no gradient checkpointing.

Both use the same lean loop (AdamW on the LoRA parameters, the config's
learning rate, linear warm-up and decay, gradient clipping at 1.0, as the
Trainer does), so the recipe is the only difference. For each it reports
real tokens/s, seconds per epoch, peak RSS, the token-weighted validation
loss on a fixed slice after training, utilisation against the machine's
GEMM peaks (measured in the same run) and a profile of one step grouped
into LM head + loss, attention, 8-bit matmuls, LoRA, optimizer and other.
Results are cached in `runs/bench/results.json` per config and settings.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorabook.config import Config, LorabookError

RECIPES = ("reference", "lorabook")
# Measured beside the two, not part of the comparison: lorabook's recipe
# without its lean autograd, and a low-memory setting of it: each batch in
# micro-batches of one sample (gradient accumulation: the same optimizer
# steps and gradients; no padding either). On the 2-core build machine
# (benchmarks of 2026-12-02) micro-batches of 2 with gradient checkpointing,
# the setting before, peaked 40-60 MB lower at 60-70% of this one's speed.
# The last one is the reference recipe under lorabook's memory allocator
# (tcmalloc, `lorabook.speed.alloc`): how much of the difference is the allocator.
VARIANTS = {"lorabook_unfused": "lorabook, without lean autograd",
            "lorabook_lowmem": "lorabook, low memory",
            "reference_tcmalloc": "reference, under tcmalloc"}
REFERENCE_PAD_TO = 256      # the assignment's max_length, every sample
CATEGORIES = ("lm_head_loss", "attention", "int8_matmul", "lora",
              "optimizer", "other")
CATEGORY_LABELS = {
    "lm_head_loss": "LM head + softmax/cross-entropy",
    "attention": "attention (sdpa, softmax, bmm, RoPE)",
    "int8_matmul": "8-bit matmuls (bitsandbytes' layers)",
    "lora": "LoRA (A, B, dropout)",
    "optimizer": "optimizer (AdamW, clipping, zero_grad)",
    "other": "other (norms, MLP activation, embeddings, casts)",
}
GEMM_DTYPES = ("fp32", "bf16", "int8")
BENCH_VERSION = 11          # bump when the measurement itself changes


def default_steps(cfg: Config) -> int:
    """Optimizer steps per recipe: a few on the tiny model, else enough
    for a stable rate while the slow reference stays within minutes."""
    return 3 if cfg.preset == "tiny" else 4


def recipe_config(cfg: Config, recipe: str) -> Config:
    """The config each recipe trains with (same model, data, LoRA, lr).

    lorabook's recipes keep cfg's `bf16` (None: where the CPU has native
    bf16), so that a test can pin either branch on any CPU."""
    if recipe in ("reference", "reference_tcmalloc"):
        return cfg.replace(speed_layer=False, quant_backend="bitsandbytes",
                           load_in_8bit=True,
                           gradient_checkpointing=True, padding="max_length",
                           bf16=False, label_only_head=False, fused_ops=False,
                           micro_batch_size=None)
    if recipe == "lorabook":
        return cfg.replace(speed_layer=True, quant_backend="int8cpu",
                           load_in_8bit=True,
                           gradient_checkpointing=False, padding="longest",
                           bf16=cfg.bf16, label_only_head=True, fused_ops=True)
    if recipe == "lorabook_unfused":
        return recipe_config(cfg, "lorabook").replace(fused_ops=False)
    if recipe == "lorabook_lowmem":
        return recipe_config(cfg, "lorabook").replace(micro_batch_size=1)
    raise LorabookError(f"unknown recipe {recipe!r}; one of {RECIPES}")


def recipe_allocator(recipe: str) -> str:
    """The C allocator a recipe's process runs under: the system's for the
    reference (the assignment's recipe runs in a stock process), tcmalloc
    for lorabook's recipes and the reference_tcmalloc variant (see
    `lorabook.speed.alloc`)."""
    return "system" if recipe == "reference" else "tcmalloc"


# --------------------------------------------------------------------------
# The machine: GEMM peaks, CPU model, load.

def gemm_peaks(n: int = 1536, threads: int | None = None,
               seconds: float = 0.6,
               dtypes: tuple = GEMM_DTYPES) -> dict:
    """Measured GEMM throughput (GFLOP/s; GOP/s for int8) of square n x n
    matmuls: fp32 and bf16 `torch.mm`, int8 `torch._int_mm` (those named in
    `dtypes`). Best of a few repetitions (other load only ever slows a run
    down)."""
    import torch
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        out = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16),
                            ("int8", torch.int8)):
            if name not in dtypes:
                continue
            if dtype is torch.int8:
                a = torch.randint(-127, 128, (n, n), generator=g,
                                  dtype=torch.int8)
                b = torch.randint(-127, 128, (n, n), generator=g,
                                  dtype=torch.int8)
                mm = torch._int_mm
            else:
                a = torch.randn(n, n, generator=g).to(dtype)
                b = torch.randn(n, n, generator=g).to(dtype)
                mm = torch.mm
            out[name] = 2 * n ** 3 / _best_seconds(lambda: mm(a, b), seconds) / 1e9
        return out
    finally:
        torch.set_num_threads(old)


def _best_seconds(fn, seconds: float) -> float:
    """Seconds of one call of `fn`, best of repeats (other load only ever
    slows a call down).

    The first call warms up kernels and threads. A call slower than
    `seconds` (bf16 or int8 emulated on a CPU without the units: about
    1 GFLOP/s, 7 s at n = 1536) is measured once, since one-off costs are
    then negligible; a fast one is repeated for `seconds` (at least three
    times) and the best taken.
    """
    t = time.perf_counter()
    fn()
    best = time.perf_counter() - t
    if best < seconds:
        best, t_end, reps = math.inf, time.perf_counter() + seconds, 0
        while reps < 3 or time.perf_counter() < t_end:
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
            reps += 1
    return best


def linear_kernels(hidden: int, inter: int, vocab: int, rows: int = 1024,
                   head_rows: int = 128, seconds: float = 0.4) -> dict:
    """GFLOP/s of the model's widening fp32 products, through MKL's sgemm
    (`F.linear`) and through `int8cpu.linear` (oneDNN where it pays):
    SwiGLU's gate/up projection (and the down projection's input gradient,
    the same shape) on `rows` positions, and the LM head on one chunk of
    `head_rows` labelled positions. Best of repeated runs."""
    import torch
    import torch.nn.functional as F
    from lorabook.speed.int8cpu import linear
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, (m, n) in (("mlp", (rows, inter)), ("lm_head", (head_rows, vocab))):
        x = torch.randn(m, hidden, generator=g)
        w = torch.randn(n, hidden, generator=g)
        for kernel, fn in (("sgemm", F.linear), ("lorabook", linear)):
            best = _best_seconds(lambda: fn(x, w), seconds)
            out[f"{name}_{kernel}"] = 2 * m * n * hidden / best / 1e9
        out[f"{name}_shape"] = [m, hidden, n]
    return out


def model_shapes(cfg: Config) -> dict | None:
    """hidden, intermediate and vocabulary sizes of cfg's model (for
    `linear_kernels`), or None for a model without them."""
    from transformers import AutoConfig
    from lorabook import model as M
    c = AutoConfig.from_pretrained(M.resolve_model_path(cfg.model_name))
    sizes = [getattr(c, k, None) for k in ("hidden_size", "intermediate_size",
                                           "vocab_size")]
    if not all(sizes):
        return None
    return dict(zip(("hidden", "inter", "vocab"), sizes))


def machine_info() -> dict:
    import torch
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from lorabook.speed.int8cpu import is_fast_bf16_cpu
        fast_bf16 = is_fast_bf16_cpu()
    except Exception:            # noqa: BLE001 - informational only
        fast_bf16 = None
    versions = {}
    import importlib.metadata as md
    for pkg in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return dict(cpu=cpu, logical_cpus=os.cpu_count(),
                torch_threads=torch.get_num_threads(),
                native_bf16=fast_bf16, python=platform.python_version(),
                platform=platform.platform(), versions=versions)


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


# --------------------------------------------------------------------------
# The data: one list of batches, used by both recipes.

def batch_plan(cfg: Config, steps: int, train_ds=None, tokenizer=None) -> list:
    """Indices of the training samples of each step; both recipes use this
    plan, so they see the same samples in the same order.

    The batches are those of one epoch of lorabook's length-grouped sampler
    (seeded with the config's seed), `steps` of them taken evenly spread
    over the epoch in their order: the sampler puts the longest batches
    first, so its first few batches alone would not show the typical
    padding of a batch. With more steps than batches, epochs repeat.
    """
    from lorabook.book.loop import length_grouped_batches
    if train_ds is None:
        train_ds = _encoded(cfg, tokenizer)["train"]
    lengths = [len(x) for x in train_ds["input_ids"]]
    bs = cfg.batch_size
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        full = [b for b in length_grouped_batches(
            lengths, bs, epochs=1, seed=cfg.seed + epoch) if len(b) == bs]
        need = steps - len(batches)
        if need >= len(full):
            batches += full
        else:
            batches += [full[round(k * len(full) / need)] for k in range(need)]
        epoch += 1
    return batches


def _encoded(cfg: Config, tokenizer=None) -> dict:
    from lorabook import model as M
    from lorabook import preprocess as P
    tokenizer = tokenizer or M.load_tokenizer(cfg)
    _, _, enc = P.prepare_data(cfg, tokenizer)
    return enc.splits


def val_slice_size(cfg: Config) -> int:
    return 8 if cfg.preset == "tiny" else 32


# --------------------------------------------------------------------------
# The profile: one step, every op's self time given to one category.

class _Labels:
    """Forward hooks that open a profiler range per interesting module, so
    ops inside know whether they belong to the LM head, attention, an 8-bit
    layer or LoRA (the innermost label wins)."""

    def __init__(self, model):
        from torch import nn
        from peft.tuners.lora import LoraLayer
        from bitsandbytes.nn import Linear8bitLt
        int8_types = (Linear8bitLt,)
        head = model.get_base_model().get_output_embeddings()
        self.handles = []
        for name, mod in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if mod is head:
                label = "lm_head_loss"
            elif isinstance(mod, int8_types):
                label = "int8_matmul"
            elif isinstance(mod, LoraLayer) or leaf in (
                    "lora_A", "lora_B", "lora_dropout") or \
                    ".lora_" in name:
                label = "lora"
            elif leaf in ("self_attn", "attention", "attn") and \
                    isinstance(mod, nn.Module):
                label = "attention"
            else:
                continue
            self._hook(mod, f"bench::{label}")

    def _hook(self, mod, name):
        from torch.profiler import record_function

        def pre(m, args):
            rf = record_function(name)
            rf.__enter__()
            m.__dict__.setdefault("_bench_rf", []).append(rf)

        def post(m, args, out):
            m.__dict__["_bench_rf"].pop().__exit__(None, None, None)

        self.handles += [mod.register_forward_pre_hook(pre),
                         mod.register_forward_hook(post)]

    def remove(self):
        for h in self.handles:
            h.remove()


def _category(ev, vocab: int, r: int) -> str | None:
    """The category an event itself names, or None to ask its parent."""
    name = ev.name
    low = name.lower()
    if name.startswith("bench::") and name[7:] in CATEGORIES:
        return name[7:]
    if name.startswith("bench::optimizer") or "optimizer." in low or \
            "adamw" in low or "clip_grad" in low:
        return "optimizer"
    if any(k in low for k in ("log_softmax", "logsoftmax", "nll_loss",
                              "nllloss", "cross_entropy", "crossentropy")):
        return "lm_head_loss"     # also fused.linear_cross_entropy
    if any(k in low for k in ("matmul8bit", "dequantlinear", "int8mm",
                              "bitsandbytes", "int8_", "_int_mm")):
        return "int8_matmul"
    dims = [d for s in (ev.input_shapes or []) if isinstance(s, list)
            for d in s if isinstance(d, int)]
    # The vocabulary dimension only occurs in the LM head and its loss
    # (the embedding lookup aside), so a softmax over it is the loss's.
    if vocab in dims and "embedding" not in low:
        return "lm_head_loss"
    if any(k in low for k in ("scaled_dot_product", "scaleddotproduct",
                              "softmax", "bmm", "attentionfp32")):
        return "attention"        # attentionfp32: fused.ATTENTION's backward
    # The LoRA rank only occurs in LoRA's 2-D matmuls (3-D ops could have
    # the batch size there instead).
    if name in ("aten::mm", "aten::addmm") and r in dims:
        return "lora"
    return None


def profile_shares(events, vocab: int, r: int) -> dict:
    """Self CPU time of every event, summed per category (shares of 1),
    plus the forward/backward/optimizer phase split and the share of
    backward time that re-runs forward modules (gradient checkpointing)."""
    cat_t = dict.fromkeys(CATEGORIES, 0.0)
    phase_t = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0, "other": 0.0}
    recompute = 0.0
    memo: dict[int, tuple] = {}

    def info(ev):
        key = id(ev)
        if key in memo:
            return memo[key]
        parent = ev.cpu_parent
        p_cat, p_phase, p_mod = info(parent) if parent is not None else \
            (None, None, False)
        cat = _category(ev, vocab, r) or p_cat
        phase = p_phase
        if ev.name in ("bench::forward", "bench::backward", "bench::optimizer"):
            phase = ev.name[7:]
        is_mod = p_mod or (ev.name.startswith("bench::")
                           and ev.name[7:] in CATEGORIES
                           and ev.name != "bench::optimizer")
        # Innermost wins: a child's own category beats the parent's, but a
        # generic op under a labelled module inherits the label.
        res = (cat, phase, is_mod)
        memo[key] = res
        return res

    total = 0.0
    other_ops: dict[str, float] = {}
    for ev in events:
        t = ev.self_cpu_time_total
        if t <= 0:
            continue
        cat, phase, in_mod = info(ev)
        cat_t[cat or "other"] += t
        if cat is None:
            other_ops[ev.name] = other_ops.get(ev.name, 0.0) + t
        phase_t[phase or "other"] += t
        if phase == "backward" and in_mod:
            recompute += t
        total += t
    total = total or 1.0
    return dict(
        shares={k: v / total for k, v in cat_t.items()},
        phases={k: v / total for k, v in phase_t.items()},
        backward_recompute_share=recompute / total,
        top_other={k: v / total for k, v in sorted(
            other_ops.items(), key=lambda kv: -kv[1])[:8]},
        profiled_ms=total / 1e3)


# --------------------------------------------------------------------------
# One recipe, in a child process.

def _rss_now_mb() -> float:
    """Resident memory now (MB), from /proc (Linux); 0 elsewhere."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * \
            os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def saved_tensor_mb(model, loss_fn) -> float:
    """MB of tensors one forward pass keeps for its backward pass.

    Counts each storage once (views share it) and leaves out the model's
    own parameters and buffers, which exist anyway.
    """
    import torch
    own = {t.untyped_storage().data_ptr()
           for t in list(model.parameters()) + list(model.buffers())}
    seen: set[int] = set()
    total = 0

    def pack(t):
        nonlocal total
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in own and ptr not in seen:
            seen.add(ptr)
            total += st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    del loss
    return total / 2**20


def run_recipe(cfg: Config, recipe: str, plan: list, *, profile: bool = True,
               n_val: int | None = None) -> dict:
    """Train one recipe on the planned batches; return its measurements.

    Meant to run in a fresh process (see `run_bench`), so that the peak RSS
    it reports is its own.
    """
    import warnings
    import torch
    from lorabook.speed import alloc
    from lorabook import evaluate as E
    from lorabook import model as M
    from lorabook import preprocess as P
    from lorabook import report
    from lorabook.book import loop as L
    warnings.filterwarnings("ignore")
    report.setup()
    rcfg = recipe_config(cfg, recipe)
    memory = {"after_imports": _rss_now_mb()}
    tok = M.load_tokenizer(rcfg)
    splits = _encoded(rcfg, tok)
    train_ds, val_ds = splits["train"], splits["validation"]
    n_val = n_val or val_slice_size(cfg)
    val_ds = val_ds.select(range(min(n_val, len(val_ds))))
    pad_to = REFERENCE_PAD_TO if rcfg.padding == "max_length" else None
    if pad_to is not None and max(len(x) for x in train_ds["input_ids"]) > pad_to:
        raise LorabookError(f"samples longer than {pad_to} tokens")
    collate = P.collator(tok, rcfg.padding, pad_to or rcfg.max_length,
                         rcfg.pad_to_multiple_of)
    feats = [{k: train_ds[i][k] for k in ("input_ids", "attention_mask", "labels")}
             for i in sorted({i for b in plan for i in b})]
    by_index = dict(zip(sorted({i for b in plan for i in b}), feats))
    # lorabook's recipe may split a batch into micro-batches (gradient
    # accumulation): the same samples and optimizer steps, less memory.
    from lorabook.train import micro_batch
    mb = micro_batch(rcfg) if rcfg.label_only_head else len(plan[0])
    batches = [[collate([by_index[i] for i in b[j:j + mb]])
                for j in range(0, len(b), mb)] for b in plan]

    memory["after_data"] = _rss_now_mb()
    t0 = time.perf_counter()
    model = M.load_model(rcfg)
    load_s = time.perf_counter() - t0
    memory["after_load"] = _rss_now_mb()
    memory["peak_load"] = _peak_rss_mb()
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    vocab = model.get_base_model().get_output_embeddings().weight.shape[0]
    loop = L.LeanLoop(rcfg, model, len(batches))
    torch.manual_seed(rcfg.seed)      # LoRA dropout
    try:
        losses, times = loop.run(batches)
    except LorabookError as e:
        raise LorabookError(f"{recipe}: {e}") from None
    peak_train = _peak_rss_mb()

    real = [sum(int(b["attention_mask"].sum()) for b in m) for m in batches]
    computed = [sum(int(b["input_ids"].numel()) for b in m) for m in batches]
    learned = [L.learned_tokens(m) for m in batches]
    steps = len(batches)
    # The first step pays one-off costs (kernel choice, allocator growth);
    # the rate is over the others when there are any.
    timed = slice(1, None) if steps > 1 else slice(None)
    tok_s = sum(real[timed]) / sum(times[timed])

    largest = max((b for m in batches for b in m),
                  key=lambda b: b["input_ids"].numel())
    saved_mb = saved_tensor_mb(model, lambda: loop.loss(largest))

    val_collate = P.collator(tok, "longest")
    sums, counts = E.response_nll(model, val_ds, val_collate, batch_size=8)
    val_loss = float(sums.sum() / counts.sum())

    kernel_ab = None
    if profile and M.quant_backend(rcfg) == "int8cpu" and not loop.bf16 \
            and recipe == "lorabook":
        kernel_ab = _kernel_ab(loop, batches)

    prof = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile
        model.train()
        labels = _Labels(model)
        try:
            # The training steps above warmed everything up already.
            with tprofile(activities=[ProfilerActivity.CPU],
                          record_shapes=True) as p:
                loop.step(batches[0], advance=False)
        finally:
            labels.remove()
        prof = profile_shares(p.events(), vocab, rcfg.lora_r)

    all_real = sum(sum(m) for m in train_ds["attention_mask"])
    return dict(
        recipe=recipe, quant_backend=M.quant_backend(rcfg), bf16=loop.bf16,
        allocator=alloc.active(),
        gradient_checkpointing=rcfg.gradient_checkpointing,
        padding=rcfg.padding if pad_to is None else f"max_length={pad_to}",
        label_only_head=rcfg.label_only_head, batch_size=rcfg.batch_size,
        micro_batch_size=mb,
        steps=steps, real_tokens=sum(real), computed_tokens=sum(computed),
        learned_tokens=sum(learned),
        padding_share=1 - sum(real) / sum(computed),
        step_times_s=times, losses=losses,
        train_s=sum(times), tokens_per_s=tok_s,
        epoch_real_tokens=all_real, n_train=len(train_ds),
        seconds_per_epoch=all_real / tok_s,
        peak_rss_mb=peak_train, peak_rss_mb_with_eval=_peak_rss_mb(),
        load_s=load_s, val_loss=val_loss, val_tokens=int(counts.sum()),
        n_val=len(val_ds), base_params=n_base, trainable_params=n_trainable,
        vocab=vocab, threads=torch.get_num_threads(), profile=prof,
        memory=memory, saved_tensors_mb=saved_mb, kernel_ab=kernel_ab,
        max_micro_batch_tokens=max(int(b["input_ids"].numel())
                                   for m in batches for b in m))


def _kernel_ab(loop, batches: list) -> dict:
    """Real tokens/s of the loop's steps with `int8cpu.linear`'s oneDNN path
    on and off, alternating step by step on the same batches (in the order
    on/off, off/on, ...) so that the machine's drift hits both alike.

    The steps are applied (the optimizer moves): call it only after
    everything that must see the trained weights.
    """
    from lorabook.speed.int8cpu import onednn_widening
    seconds = {True: 0.0, False: 0.0}
    real = 0
    timed = batches[1:] or batches
    for i, micro in enumerate(timed):
        real += sum(int(b["attention_mask"].sum()) for b in micro)
        for flag in ((True, False) if i % 2 == 0 else (False, True)):
            with onednn_widening(flag):
                t = time.perf_counter()
                loop.step(micro, advance=False)
                seconds[flag] += time.perf_counter() - t
    return dict(onednn=real / seconds[True], sgemm=real / seconds[False],
                steps=2 * len(timed))


# --------------------------------------------------------------------------
# The driver.

def _bench_key(cfg: Config, steps: int, gemm_n: int) -> dict:
    return dict(config_hash=cfg.hash(), steps=steps, gemm_n=gemm_n,
                pad_to=REFERENCE_PAD_TO, n_val=val_slice_size(cfg),
                version=BENCH_VERSION)


def _child(kind: str, spec: dict, timeout: float | None = None,
           allocator: str = "system") -> dict:
    """Run `python -m benchmarks.harness --child` under `allocator` and return
    its JSON."""
    from lorabook.speed import alloc
    with tempfile.TemporaryDirectory() as d:
        spec_path, out_path = Path(d) / "spec.json", Path(d) / "out.json"
        spec_path.write_text(json.dumps(dict(spec, kind=kind, out=str(out_path))))
        env = alloc.child_env(dict(os.environ, TOKENIZERS_PARALLELISM="false",
                                   HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore"),
                              allocator)
        root = str(Path(__file__).resolve().parents[1])   # benchmarks/
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        p = subprocess.run([sys.executable, "-m", "benchmarks.harness", "--child",
                            str(spec_path)], capture_output=True, text=True,
                           env=env, timeout=timeout)
        if p.returncode or not out_path.is_file():
            tail = "\n".join(p.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"bench child {kind!r} failed "
                               f"(exit {p.returncode}):\n{tail}")
        return json.loads(out_path.read_text())


def _child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    cfg = _config_from_dict(spec["config"])
    if spec["kind"] == "gemm":
        dtypes = tuple(spec.get("dtypes", GEMM_DTYPES))
        out = dict(threads={str(t): gemm_peaks(spec["gemm_n"], threads=t, dtypes=dtypes)
                            for t in spec["threads"]})
        if spec.get("shapes"):
            out["kernels"] = linear_kernels(**spec["shapes"])
    else:
        out = run_recipe(cfg, spec["kind"], spec["plan"],
                         profile=spec.get("profile", True))
    Path(spec["out"]).write_text(json.dumps(out))


def _config_from_dict(d: dict) -> Config:
    d = dict(d)
    if isinstance(d.get("target_modules"), list):
        d["target_modules"] = tuple(d["target_modules"])
    return Config(**d)


def utilisation(entry: dict, peaks: dict) -> dict:
    """Useful FLOP/s against each measured peak.

    The FLOP model is the issue's: a LoRA step costs about 4*N FLOP per real
    token (2N forward, 2N for the input gradients; the frozen weights need
    no weight gradient, LoRA's own FLOPs are negligible), with N = every
    base-model parameter, the tied embedding counted once (it is the LM
    head). It counts the useful work of a token, so work a recipe wastes
    (padding, logits nobody needs, recomputation) lowers its utilisation.
    """
    flops = 4 * entry["base_params"] * entry["tokens_per_s"]
    return {k: flops / (v * 1e9) for k, v in peaks.items()} | {
        "useful_gflops": flops / 1e9}


def bench_dir(cfg: Config, out_dir: str | None = None) -> Path:
    """`runs/bench` for the default preset, `runs/bench-<preset>` else, so
    a tiny build of the book never evicts the real benchmark's cache."""
    if out_dir is None:
        out_dir = "runs/bench" if cfg.preset == "default" else \
            f"runs/bench-{cfg.preset}"
    return cfg.resolve(out_dir)


def run_bench(cfg: Config, *, steps: int | None = None,
              out_dir: str | None = None, force: bool = False,
              gemm_n: int | None = None, profile: bool = True,
              verbose: bool = True) -> dict:
    """Benchmark the reference recipe against lorabook's; cache the result.

    Returns the dict also written to `<out_dir>/results.json` (and a
    Markdown table to `results.md`); out_dir defaults to `runs/bench`
    (`runs/bench-<preset>` for other presets). A cached result of the same
    config and settings is reused unless `force`.
    """
    steps = steps or default_steps(cfg)
    if steps < 1:
        raise LorabookError("steps must be a positive integer")
    gemm_n = gemm_n or (512 if cfg.preset == "tiny" else 1536)
    out = bench_dir(cfg, out_dir)
    path = out / "results.json"
    key = _bench_key(cfg, steps, gemm_n)
    if not force and path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("key") == key:
            if verbose:
                print(f"Reusing the benchmark in {path}")
            return old

    t_start = time.time()
    load_before = loadavg()
    spec = dict(config=cfg.to_dict())
    plan = batch_plan(cfg, steps)
    if verbose:
        print(f"GEMM peaks ({gemm_n}x{gemm_n}) ...", flush=True)
    threads = sorted({1, _threads()})
    gemm = _child("gemm", dict(spec, gemm_n=gemm_n, threads=threads,
                               shapes=model_shapes(cfg)))

    def train(name: str, what: str, profile: bool) -> dict:
        if verbose:
            print(f"Training the {name} {what} for {steps} steps ...",
                  flush=True)
        e = _child(name, dict(spec, plan=plan, profile=profile),
                   allocator=recipe_allocator(name))
        if verbose:
            print(f"  {e['tokens_per_s']:.1f} real tok/s, peak RSS "
                  f"{e['peak_rss_mb']:.0f} MB, val loss {e['val_loss']:.4f}",
                  flush=True)
        return e

    entries = {r: train(r, "recipe", profile) for r in RECIPES}
    variants = {v: train(v, "variant", False) for v in VARIANTS
                if _applies(cfg, v)}
    # The fp32 peak once more: a peak measured while something else ran is
    # too low, and load only ever slows a matmul down, so the better of the
    # two is the machine's.
    after = _child("gemm", dict(spec, gemm_n=gemm_n, threads=[_threads()],
                                dtypes=["fp32"]))["threads"][str(_threads())]
    before = gemm["threads"][str(_threads())]
    peaks = dict(before, fp32=max(before["fp32"], after["fp32"]))
    for e in [*entries.values(), *variants.values()]:
        e["utilisation"] = utilisation(e, peaks)
    ref, lb = entries["reference"], entries["lorabook"]
    if ref["real_tokens"] != lb["real_tokens"]:
        raise RuntimeError("the recipes saw different numbers of real tokens")
    result = dict(
        key=key, preset=cfg.preset, steps=steps, batch_size=cfg.batch_size,
        reference=ref, lorabook=lb, variants=variants,
        speedup=lb["tokens_per_s"] / ref["tokens_per_s"],
        memory_ratio=lb["peak_rss_mb"] / ref["peak_rss_mb"],
        val_loss_diff=lb["val_loss"] - ref["val_loss"],
        target_speedup=5.0, target_memory_ratio=1 / 3,
        peaks=peaks, peaks_by_threads=gemm["threads"], gemm_n=gemm_n,
        fp32_peak_runs=[before["fp32"], after["fp32"]],
        kernels=gemm.get("kernels"),
        flop_model="4 * N FLOP per real token, N = base parameters "
                   "(tied embedding / LM head counted once)",
        machine=dict(machine_info(), load_before=load_before,
                     load_after=loadavg()),
        wall_s=time.time() - t_start,
        finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    (out / "results.md").write_text(markdown_table(result) + "\n")
    return result


def _applies(cfg: Config, recipe: str) -> bool:
    """Whether a recipe's config is valid for `cfg`."""
    try:
        recipe_config(cfg, recipe)
    except LorabookError:
        return False
    if recipe == "reference_tcmalloc":      # an allocator comparison
        from lorabook.speed.alloc import tcmalloc_path
        return tcmalloc_path() is not None
    return True


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def table_rows(result: dict) -> list[dict]:
    """One row per recipe: what the book's table and `results.md` show."""
    rows = []
    entries = [(r, result[r]) for r in RECIPES] + [
        (VARIANTS.get(k, k), e) for k, e in result.get("variants", {}).items()]
    for recipe, e in entries:
        # Utilisation against the peak of the dtype the recipe computes in:
        # a bf16 figure means nothing on a CPU that only emulates bf16.
        dtype = "bf16" if e.get("bf16") else "fp32"
        rows.append({
            "recipe": recipe,
            # Pre-formatted: one float format cannot suit every column.
            "real tok/s": f"{e['tokens_per_s']:.1f}",
            "s/epoch": f"{e['seconds_per_epoch']:.0f}",
            "peak RSS (MB)": f"{e['peak_rss_mb']:.0f}",
            "val loss": f"{e['val_loss']:.4f}",
            "util. of peak": f"{e['utilisation'][dtype]:.1%} {dtype}",
            "padding": f"{e['padding_share']:.0%}",
            "allocator": e.get("allocator", "system"),
        })
    return rows


def profile_rows(result: dict) -> list[dict]:
    rows = []
    for cat in CATEGORIES:
        rows.append({"where the time goes": CATEGORY_LABELS[cat], **{
            r: f"{(result[r]['profile'] or {}).get('shares', {}).get(cat, 0):.1%}"
            for r in RECIPES}})
    return rows


def markdown_table(result: dict) -> str:
    import pandas as pd
    lines = [pd.DataFrame(table_rows(result)).to_markdown(index=False), "",
             f"speedup (real tok/s, lorabook / reference): "
             f"{result['speedup']:.2f}x; peak RSS ratio: "
             f"{result['memory_ratio']:.2f}; {result['steps']} steps of "
             f"batch {result['batch_size']}, "
             f"{result['reference']['real_tokens']} real tokens each"]
    if all(result[r].get("profile") for r in RECIPES):
        lines += ["", pd.DataFrame(profile_rows(result)).to_markdown(index=False)]
    p = result["peaks"]
    m = result["machine"]
    lines += ["", f"GEMM peaks ({m['torch_threads']} threads): fp32 "
              f"{p['fp32']:.0f} GFLOP/s, bf16 {p['bf16']:.0f} GFLOP/s, int8 "
              f"{p['int8']:.0f} GOP/s; load average before "
              f"{m['load_before']}, after {m['load_after']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    """`make bench`: measure (or reuse) and print the comparison table."""
    from lorabook.config import load_config
    ap = argparse.ArgumentParser(prog="python -m benchmarks.harness")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help="config preset (default: default)")
    ap.add_argument("--config", help="YAML file of config fields")
    ap.add_argument("--steps", type=int, help="optimizer steps per recipe")
    ap.add_argument("--force", action="store_true",
                    help="measure again even if a cached result exists")
    args = ap.parse_args(argv)
    if args.child:
        _child_main(args.child)
        return 0
    try:
        cfg = load_config(args.preset, args.config)
        print(markdown_table(run_bench(cfg, steps=args.steps, force=args.force)))
    except LorabookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
