"""Contamination check (chapters 1 and 5): did the base model see these texts?

SmolLM2 was pretrained on web text, and the State of the Union addresses
are published all over the web. A language model that saw a text often
enough reproduces it: given the text's opening as a plain prompt, its
greedy continuation repeats the real next words. This is the test of
extractable memorization (Carlini et al., 2021; 2023): prompt with a
prefix, decode greedily, count how much of the true continuation comes
back word for word.

`memorization_check` runs it on real passages and on a control set the
model cannot have seen (`sotu.control.CONTROL`, passages in the manner of
an address, written for this report in 2026), so the control shows how many words a
good guess reproduces by chance.
"""
from __future__ import annotations

import contextlib

import numpy as np

from lorabook import metrics as X
from lorabook.config import LorabookError
from lorabook.generation import generate
from lorabook.sotu.control import CONTROL

def prefix_match(generated: str, reference: str) -> int:
    """Words of `reference` that `generated` reproduces from the start."""
    g, r = X.words(generated), X.words(reference)
    n = 0
    for a, b in zip(g, r):
        if a != b:
            break
        n += 1
    return n


def longest_shared_run(generated: str, reference: str) -> int:
    """Longest run of consecutive words the two texts share, anywhere."""
    g, r = X.words(generated), X.words(reference)
    best, prev = 0, [0] * (len(r) + 1)
    for a in g:
        cur = [0] * (len(r) + 1)
        for j, b in enumerate(r, 1):
            if a == b:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def _summary(gens: list[str], refs: list[str], k: int) -> dict:
    pre = [prefix_match(g, r) for g, r in zip(gens, refs)]
    run = [longest_shared_run(g, r) for g, r in zip(gens, refs)]
    return dict(n=len(refs), mean_prefix=float(np.mean(pre)),
                share_prefix_k=float(np.mean([p >= k for p in pre])),
                mean_run=float(np.mean(run)), max_run=int(max(run)),
                prefix=pre, run=run)


def memorization_check(model, tokenizer, samples: list[dict],
                       control=CONTROL, max_new_tokens: int = 32,
                       k: int = 5) -> dict:
    """Greedy continuations of plain-text openings, real and control.

    `samples` are passages with an opening (the prompt's last line) and a
    response. Each opening is given as plain text, without the chat
    template: memorized text comes back from the words that preceded it
    on the web, not from a chat turn. Both the base model (adapter off)
    and the fine-tuned model answer. `k`: the prefix length (words)
    counted as reproduced.
    """
    if not samples:
        raise LorabookError("the memorization check needs passages")
    openings = [s["prompt"].split("\n", 1)[-1] for s in samples]
    refs = [s["response"] for s in samples]
    c_open, c_refs = [c[0] for c in control], [c[1] for c in control]

    def ids(texts):
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    out = dict(k=k, max_new_tokens=max_new_tokens)
    for name, adapter in (("base", False), ("finetuned", True)):
        ctx = model.disable_adapter() if not adapter else contextlib.nullcontext()
        with ctx:
            real = generate(model, tokenizer, ids(openings),
                            max_new_tokens=max_new_tokens)
            ctrl = generate(model, tokenizer, ids(c_open),
                            max_new_tokens=max_new_tokens)
        out[name] = dict(real=_summary([g["text"] for g in real], refs, k),
                         control=_summary([g["text"] for g in ctrl], c_refs, k))
        if name == "base":
            j = int(np.argmax(out[name]["real"]["prefix"]))
            out["example"] = dict(id=samples[j].get("id"), opening=openings[j],
                                  reference=refs[j], generated=real[j]["text"],
                                  prefix=out[name]["real"]["prefix"][j])
    return out
