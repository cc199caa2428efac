"""Benchmark 8-bit LoRA training steps on the CPU: bitsandbytes vs lorabook.int8cpu.

Each variant runs in its own subprocess (clean peak RSS). A step is one LoRA
training step (forward, backward, AdamW on the LoRA params only) on a batch
of 8 x 96 real tokens (no padding; loss on the second half of each sample,
as for a prompt/response pair). Prints a markdown table and writes JSON.

    .venv/bin/python benchmarks/bench_layers.py                 # all variants
    .venv/bin/python benchmarks/bench_layers.py --variants int8_bf16,bf16_autocast
    .venv/bin/python benchmarks/bench_layers.py --micro         # per-layer kernels
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

VARIANTS = {
    # name: description
    "bnb8_gc": "(a) bnb 8-bit fp32, prepare_model_for_kbit_training defaults (grad ckpt on)",
    "bnb8": "(b) bnb 8-bit fp32, no gradient checkpointing",
    "fp32": "(c) unquantized fp32",
    "bf16_autocast": "(d) unquantized, bf16 autocast",
    "int8_bf16": "(e) int8cpu.Int8Linear, bf16 autocast",
    "int8_bf16_headsel": "(f) (e) + LM head only at label positions",
    "int8_bf16_noautocast": "(e') Int8Linear bf16 compute, rest fp32 (no autocast)",
    "int8_savedeq": "(e'') (e) keeping the bf16 weight for backward",
    "int8mm": "(e''') Int8Linear mode=int8mm (torch._int_mm), bf16 autocast",
    "bf16_headsel": "(d') (d) + LM head only at label positions",
}
DEFAULT = ["bnb8_gc", "bnb8", "fp32", "bf16_autocast", "int8_bf16", "int8_bf16_headsel",
           "int8_bf16_noautocast", "int8_savedeq", "int8mm"]


def make_batches(tok, n_batches, batch, seq):
    """Deterministic real-text batches (GPL text shipped with Debian, else random ids)."""
    import torch
    text = ""
    for p in ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0",
              "/usr/share/common-licenses/GPL-2"):
        if os.path.exists(p):
            text += open(p, encoding="utf-8", errors="ignore").read()
    need = n_batches * batch * seq
    if text:
        ids = tok(text, return_tensors="pt").input_ids[0]
        ids = ids.repeat(need // len(ids) + 1)[:need]
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, tok.vocab_size, (need,), generator=g)
    ids = ids.view(n_batches, batch, seq)
    out = []
    for b in ids:
        labels = b.clone()
        labels[:, : seq // 2] = -100  # "prompt" half carries no loss
        out.append((b.clone(), labels))
    return out


def vm_hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return None


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_variant(name, args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from lorabook.int8cpu import model_nbytes, quantize_model_8bit

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    n_steps = args.warmup + args.steps
    batches = make_batches(tok, n_steps, args.batch, args.seq)

    t0 = time.perf_counter()
    info = {}
    if name.startswith("bnb8"):
        model = AutoModelForCausalLM.from_pretrained(
            args.model, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
            device_map="cpu", dtype=torch.float32)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=(name == "bnb8_gc"))
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        info["bytes_fp32"] = model_nbytes(model)
        if name.startswith("int8"):
            kw = {"compute_dtype": torch.bfloat16}
            if name == "int8_savedeq":
                kw["save_dequantized"] = True
            if name == "int8mm":
                kw["mode"] = "int8mm"
            quantize_model_8bit(model, **kw)
            # Recommended: freezes everything, leaves int8 weights alone, and
            # (model not flagged is_loaded_in_8bit) does not enable checkpointing.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    info["bytes_model"] = model_nbytes(model)
    lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    model.train()
    info["load_s"] = round(time.perf_counter() - t0, 2)
    info["rss_after_setup_mb"] = round(int(open("/proc/self/statm").read().split()[1])
                                       * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=args.lr)
    autocast = name in ("bf16_autocast", "bf16_headsel", "int8_bf16", "int8_bf16_headsel",
                        "int8_savedeq", "int8mm")
    headsel = name.endswith("headsel")
    inner = model.base_model.model  # LlamaForCausalLM

    def loss_fn(ids, labels):
        if not headsel:
            return model(input_ids=ids, labels=labels).loss
        # Only positions that carry a label need logits: half of the lm_head
        # (576 x 49152, the largest matmul) and of the softmax are skipped.
        h = inner.model(input_ids=ids).last_hidden_state[:, :-1]
        tgt = labels[:, 1:]
        mask = tgt != -100
        logits = inner.lm_head(h[mask])
        return torch.nn.functional.cross_entropy(logits.float(), tgt[mask])

    torch.manual_seed(1)
    losses, times = [], []
    hwm_ok = reset_hwm()
    for step, (ids, labels) in enumerate(batches):
        if step == args.warmup:
            reset_hwm()
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(round(loss.item(), 4))
    timed = times[args.warmup:]
    step_s = sorted(timed)[len(timed) // 2]  # median
    tokens = args.batch * args.seq
    info.update(
        variant=name, desc=VARIANTS[name], step_s_median=round(step_s, 3),
        step_s_min=round(min(timed), 3), tok_per_s_best=round(tokens / min(timed), 1),
        step_s_mean=round(sum(timed) / len(timed), 3), tok_per_s=round(tokens / step_s, 1),
        losses=losses, peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        train_peak_rss_mb=round(vm_hwm_kb() / 1024, 1) if hwm_ok else None,
        int8_weights_intact=all(m.weight.dtype == torch.int8 for n, m in model.named_modules()
                                if hasattr(m, "weight_scale")),
    )
    return info


def micro(args):
    """Per-linear forward+backward(input grad) time for SmolLM2 shapes, M=batch*seq rows."""
    import torch
    import bitsandbytes as bnb
    from lorabook.int8cpu import Int8Linear
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    m = args.batch * args.seq
    rows = []
    for k, n in [(576, 576), (576, 192), (576, 1536), (1536, 576)]:
        torch.manual_seed(0)
        lin = torch.nn.Linear(k, n, bias=False).requires_grad_(False)
        bl = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=6.0)
        bl.load_state_dict(lin.state_dict())
        bl = bl.to("cpu")
        cands = {
            "fp32": (lin, False),
            "bf16 autocast": (lin, True),
            "bnb8 (fp32 in)": (bl, False),
            "Int8Linear dequant": (Int8Linear.from_linear(lin, compute_dtype=torch.bfloat16), True),
            "Int8Linear save_deq": (Int8Linear.from_linear(lin, compute_dtype=torch.bfloat16,
                                                           save_dequantized=True), True),
            "Int8Linear int8mm": (Int8Linear.from_linear(lin, compute_dtype=torch.bfloat16,
                                                         mode="int8mm"), True),
        }
        row = {"shape": f"{k}x{n}"}
        for cname, (mod, ac) in cands.items():
            x = torch.randn(m, k, requires_grad=True)

            def f():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
                    y = mod(x)
                y.sum().backward()
            for _ in range(3):
                f()
            t = time.perf_counter()
            for _ in range(args.micro_iters):
                f()
            row[cname] = round((time.perf_counter() - t) / args.micro_iters * 1e3, 3)
        rows.append(row)
    cols = list(rows[0])
    print(f"\nPer-layer forward+backward (ms), M={m} rows, {args.threads} threads\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("LORABOOK_SMOL", "/tmp/smol"))
    ap.add_argument("--variants", default=",".join(DEFAULT),
                    help="comma list of: " + ",".join(VARIANTS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "runs/bench/layers.json"))
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the variant list this many times (interleaved), keep each variant's "
                         "fastest run: other load on the machine only ever slows a run down")
    ap.add_argument("--micro", action="store_true", help="also run the per-layer micro benchmark")
    ap.add_argument("--micro-iters", type=int, default=20)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print("RESULT " + json.dumps(run_variant(args.child, args)), flush=True)
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results = []
    passthru = ["--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq),
                "--warmup", str(args.warmup), "--steps", str(args.steps), "--lr", str(args.lr),
                "--threads", str(args.threads)]
    names = args.variants.split(",")
    for name in names:
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name}")
    for name in names * args.repeat:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        p = subprocess.run([sys.executable, __file__, "--child", name, *passthru],
                           capture_output=True, text=True, env=env)
        line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
        if p.returncode or line is None:
            print(p.stderr[-3000:], file=sys.stderr)
            results.append({"variant": name, "desc": VARIANTS[name], "error": p.stderr[-500:]})
            continue
        r = json.loads(line[7:])
        print(f"  {r['tok_per_s']} tok/s, losses {r['losses']}", file=sys.stderr, flush=True)
        r["runs_tok_per_s"] = [r["tok_per_s"]]
        prev = next((q for q in results if q["variant"] == name and "error" not in q), None)
        if prev is None:
            results.append(r)
        else:
            r["runs_tok_per_s"] = prev["runs_tok_per_s"] + r["runs_tok_per_s"]
            if r["tok_per_s"] > prev["tok_per_s"]:
                results[results.index(prev)] = r
            else:
                prev["runs_tok_per_s"] = r["runs_tok_per_s"]

    micro_rows = micro(args) if args.micro else None
    print(f"\nLoRA step, batch {args.batch}x{args.seq} real tokens, {args.threads} threads, "
          f"median of {args.steps} steps after {args.warmup} warm-up "
          f"(best of {args.repeat} runs; 'best step' = fastest single step)\n")
    print("| variant | tok/s | tok/s best step | step s | params+buffers MB | peak RSS MB | "
          "train peak RSS MB | losses |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['desc']} | error | | | | | | |")
            continue
        print(f"| {r['desc']} | {r['tok_per_s']} | {r['tok_per_s_best']} | {r['step_s_median']} | "
              f"{r['bytes_model'] / 2**20:.1f} | {r['peak_rss_mb']} | {r['train_peak_rss_mb']} | "
              f"{' '.join(f'{x:.3f}' for x in r['losses'])} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "results": results, "micro": micro_rows},
                              indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
