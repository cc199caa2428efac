"""How the models are asked and how they decode (chapter 5).

`generate` is the book's one call of `model.generate`; `instructed_prompt`
and `few_shot` give the base model its fair chance; `DECODING` is the one
decoding every shown and scored generation uses.
"""
from __future__ import annotations

import torch

from lorabook import data as D
from lorabook import model as M
from lorabook import preprocess as P
from lorabook.config import LorabookError
from lorabook.speed.int8cpu import dequantized_for_inference


def instructed_prompt(prompt: str, corpus=None) -> str:
    """The base model's fair chance: the same prompt, and the task said.

    The base model is an instruction-tuned assistant; given the bare
    training prompt it answers like one. This wrapper tells it what the
    fine-tuned model learned from examples: continue the passage. The
    words are the corpus's (`corpus.Corpus.instruction`); by default, that
    of the corpus whose form the prompt has.
    """
    corpus = corpus or D.corpus_for([dict(prompt=prompt)])
    return corpus.instruction(prompt)


def chat_ids(turns: list[str], tokenizer) -> list[int]:
    """Token ids of a few-shot chat: user, assistant, ..., user turns.

    The last turn is the user's; the assistant's answer follows. Each
    (user, assistant) pair before it is one worked example.
    """
    if len(turns) % 2 != 1:
        raise LorabookError("a few-shot chat needs an odd number of turns "
                            "(examples as user/assistant pairs, then a user)")
    chatml = "<|im_start|>" in (getattr(tokenizer, "chat_template", None) or "")
    end = tokenizer("<|im_end|>\n" if chatml else "\n",
                    add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for j in range(0, len(turns), 2):
        part = P.prompt_ids(turns[j], tokenizer)
        if ids and not chatml and tokenizer.bos_token_id is not None \
                and part[:1] == [tokenizer.bos_token_id]:
            part = part[1:]             # one BOS, at the very start
        ids += part
        if j + 1 < len(turns):
            ids += tokenizer(turns[j + 1], add_special_tokens=False)["input_ids"]
            ids += end
    return ids


@torch.no_grad()
def generate(model, tokenizer, prompts: list, *, max_new_tokens: int,
             do_sample: bool = False, seed: int = 0, temperature: float = 0.8,
             top_p: float = 0.95, repetition_penalty: float = 1.0,
             no_repeat_ngram_size: int = 0, batch_size: int = 64,
             max_positions: int | None = None) -> list[dict]:
    """Batched generation with the KV cache; stops at EOS.

    8-bit layers are de-quantized once per call, not once per new token
    (`int8cpu.dequantized_for_inference`), and prompts go in batches of 64:
    on a CPU a decoding step of 64 rows costs little more than one of 16.
    `max_positions` caps a batch's rows times (longest prompt +
    `max_new_tokens`), which bounds the memory of its KV cache.

    A prompt is a string (formatted by `preprocess.prompt_ids`), a list of
    chat turns (`chat_ids`) or a list of token ids, used as they are.
    Prompts are left-padded so every sequence's next token sits at the same
    position. Returns text, whether the model stopped by itself, and the
    number of generated tokens.
    """
    # Adapted from the transformers docs on batched generation (left-padded
    # prompts; attention_mask, pad_token_id and eos_token_id passed to
    # model.generate): bounded batches, 8-bit layers de-quantized once per
    # call, a seed per batch, each output cut at its EOS before decoding.
    model.eval()
    kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p,
                  top_k=0) if do_sample else dict(do_sample=False)
    if repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = repetition_penalty
    if no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size
    all_ids = [P.prompt_ids(p, tokenizer) if isinstance(p, str)
               else list(p) if p and isinstance(p[0], int)
               else chat_ids(p, tokenizer) for p in prompts]
    if max_positions and all_ids:
        longest = max(map(len, all_ids)) + max_new_tokens
        batch_size = max(1, min(batch_size, max_positions // longest))
    results = []
    with dequantized_for_inference(model):
        for i in range(0, len(prompts), batch_size):
            chunk = all_ids[i:i + batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c
                                for c in chunk], device=M.device())
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c)
                                 for c in chunk], device=M.device())
            torch.manual_seed(seed + i)
            out = model.generate(
                input_ids=ids, attention_mask=mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, use_cache=True, **kwargs)
            for row in out[:, width:].tolist():
                stopped = tokenizer.eos_token_id in row
                row = row[:row.index(tokenizer.eos_token_id)] if stopped else [
                    t for t in row if t != tokenizer.pad_token_id]
                results.append(dict(text=tokenizer.decode(
                    row, skip_special_tokens=True).strip(),
                    stopped=stopped, n_tokens=len(row) + int(stopped)))
    return results


# The decodings compared (chapter 5, benchmarks/recipe_sweep.py), and the
# one every shown and scored generation uses. The recipe sweep chose
# sampling at temperature 1: the fine-tuned model's greedy and cooler
# decodings end after one short sentence and rarely say "we", where the
# real passages are longer and speak as "we" in about half the cases. The
# seed makes each draw reproducible.
DECODING_CANDIDATES = {
    "greedy": dict(do_sample=False),
    "greedy, no repeated 3-gram": dict(do_sample=False, no_repeat_ngram_size=3),
    "sampling at temperature 0.8": dict(do_sample=True, temperature=0.8,
                                        top_p=0.95, seed=1234),
    "sampling at temperature 1": dict(do_sample=True, temperature=1.0,
                                      top_p=0.95, seed=1234),
}
DECODING_NAME = "sampling at temperature 1"
DECODING = DECODING_CANDIDATES[DECODING_NAME]
DECODING_ALTERNATIVES = {k: v for k, v in DECODING_CANDIDATES.items()
                         if k != DECODING_NAME}
# What the recipe sweep scores on every recipe.
DECODINGS = {k: DECODING_CANDIDATES[k] for k in (
    "greedy, no repeated 3-gram", "sampling at temperature 0.8",
    "sampling at temperature 1")}


def describe_decoding(kw: dict) -> str:
    """generate() keyword arguments as the book prints them."""
    return ", ".join(f"{k}={v}" for k, v in kw.items())


def few_shot(prompt: str, train: list[dict], corpus=None) -> list[str]:
    """The instructed base model's chat: one worked example, then the task.

    The example is the corpus's choice (`Corpus.example_for`): for the
    State of the Union, the training passage closest in year to the prompt
    (the first such in the split's order); for other data, the first
    training sample. Both are asked in the same instructed form.
    """
    corpus = corpus or D.corpus_for(train)
    ex = corpus.example_for(prompt, train)
    return [instructed_prompt(ex["prompt"], corpus), ex["response"],
            instructed_prompt(prompt, corpus)]


def instructed_dataset(dataset, samples: list[dict], train: list[dict],
                       tokenizer, corpus=None):
    """The same examples with the instructed base model's chat (the task
    said, one worked example: `few_shot`) in place of the bare prompt.

    The response tokens, and so what perplexity scores, are unchanged; only
    what comes before them differs.
    """
    from datasets import Dataset
    by_id = {s["id"]: s for s in samples}
    corpus = corpus or D.corpus_for(train)   # once: it reads every training prompt
    rows = []
    for ex in dataset:
        response = [t for t in ex["labels"] if t != -100]
        p = chat_ids(few_shot(by_id[ex["id"]]["prompt"], train, corpus),
                     tokenizer)
        rows.append(dict(input_ids=p + response,
                         attention_mask=[1] * (len(p) + len(response)),
                         labels=[-100] * len(p) + response))
    return Dataset.from_list(rows)
