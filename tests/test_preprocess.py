import pytest
import torch

from lorabook.config import LorabookError
from lorabook import preprocess as P

PROMPT = "1790, George Washington (No party):\nFellow-Citizens of the Senate."
RESPONSE = "I feel much satisfaction in being able to repeat my congratulations."


def test_masking_is_exact(tokenizer):
    ex = P.encode(PROMPT, RESPONSE, tokenizer, max_length=128)
    p = P.prompt_ids(PROMPT, tokenizer)
    r = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    assert ex["input_ids"] == p + r + [tokenizer.eos_token_id]
    assert ex["labels"][:len(p)] == [-100] * len(p)
    assert ex["labels"][len(p):] == r + [tokenizer.eos_token_id]
    # The decoded learned tokens are exactly the response and its EOS.
    learned = [t for t in ex["labels"] if t != -100]
    assert tokenizer.decode(learned) == RESPONSE + tokenizer.eos_token


def test_prompt_format_has_no_default_system_turn(tokenizer):
    text = P.format_prompt("hi", tokenizer)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "SmolLM" not in text
    # BOS is <|im_start|> for SmolLM2: present once, not doubled.
    ids = P.prompt_ids("hi", tokenizer)
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id


def test_pad_is_not_eos(tokenizer):
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_collator_masks_padding_by_position(tokenizer):
    a = P.encode(PROMPT, RESPONSE, tokenizer, 128)
    b = P.encode(PROMPT, "Short.", tokenizer, 128)
    batch = P.collator(tokenizer)([a, b])
    n = len(b["input_ids"])
    assert batch["input_ids"].shape[1] == len(a["input_ids"])
    assert (batch["labels"][1, n:] == -100).all()
    assert (batch["attention_mask"][1, n:] == 0).all()
    assert batch["labels"][1, n - 1] == tokenizer.eos_token_id

    # Even if pad == EOS (as SmolLM2 ships), the EOS label survives.
    import copy
    same = copy.deepcopy(tokenizer)
    same.pad_token = same.eos_token
    batch = P.collator(same)([a, b])
    assert batch["labels"][1, n - 1] == tokenizer.eos_token_id
    assert (batch["input_ids"][1, n:] == tokenizer.eos_token_id).all()


def test_collator_max_length(tokenizer):
    a = P.encode(PROMPT, RESPONSE, tokenizer, 128)
    batch = P.collator(tokenizer, "max_length", 128)([a])
    assert batch["input_ids"].shape == (1, 128)
    with pytest.raises(LorabookError):
        P.collator(tokenizer, "max_length", None)


def test_collator_rounds_the_width_up_to_a_multiple(tokenizer):
    feats = [{"input_ids": [5] * n, "attention_mask": [1] * n, "labels": [7] * n}
             for n in (3, 17)]
    batch = P.collator(tokenizer, multiple_of=16)(feats)
    assert batch["input_ids"].shape == (2, 32)
    assert batch["attention_mask"].sum().item() == 20          # real tokens only
    assert (batch["labels"][1, 17:] == -100).all()
    assert P.collator(tokenizer)(feats)["input_ids"].shape[1] == 17
    with pytest.raises(LorabookError, match="multiple_of"):
        P.collator(tokenizer, multiple_of=0)


def test_truncation_cuts_response_not_prompt(tokenizer):
    p = P.prompt_ids(PROMPT, tokenizer)
    ex = P.encode(PROMPT, RESPONSE, tokenizer, max_length=len(p) + 3)
    assert len(ex["input_ids"]) == len(p) + 3
    assert ex["labels"][-1] != tokenizer.eos_token_id     # cut: no EOS
    assert sum(l != -100 for l in ex["labels"]) == 3
    # No room for any response token: the sample is dropped, not kept.
    assert P.encode(PROMPT, RESPONSE, tokenizer, max_length=len(p)) is None


def test_tokenize_splits_counts_and_errors(tokenizer, tiny_cfg):
    samples = [dict(id=str(i), prompt=PROMPT, response=RESPONSE * (i % 3 + 1))
               for i in range(6)]
    enc = P.tokenize_splits({"train": samples}, tokenizer, tiny_cfg)
    assert len(enc.splits["train"]) == 6
    assert 0 < enc.learned_share["train"] < 1
    cfg = tiny_cfg.replace(max_length=8)
    with pytest.raises(LorabookError, match="max_length"):
        P.tokenize_splits({"train": samples}, tokenizer, cfg)


def test_guard_catches_fully_masked_examples():
    from datasets import Dataset
    ok = Dataset.from_dict({"labels": [[-100, 5, 6]]})
    assert P.check_learned_tokens(ok) == pytest.approx(2 / 3)
    bad = Dataset.from_dict({"labels": [[-100, 5], [-100, -100]]})
    with pytest.raises(LorabookError, match="no learned token"):
        P.check_learned_tokens(bad)


def test_encoding_is_pinned(tokenizer):
    """The exact ids of one example (SmolLM2's tokenizer and chat template):
    a change of template, special tokens, masking or truncation shows here,
    not only as a slightly different loss."""
    prompt = [1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]  # <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n
    response = [54, 3164, 4240, 30, 2]                          # Fellow citizens.<|im_end|>
    ex = P.encode("hi", "Fellow citizens.", tokenizer, 64)
    assert ex == dict(input_ids=prompt + response,
                      attention_mask=[1] * 15,
                      labels=[-100] * 10 + response)
    # Truncated: the response is cut from the right and loses its EOS.
    cut = P.encode("hi", "Fellow citizens.", tokenizer, 12)
    assert cut["input_ids"] == prompt + response[:2]
    assert cut["labels"] == [-100] * 10 + response[:2]
    assert P.encode("hi", "Fellow citizens.", tokenizer, 10) is None


def test_masking_table(tokenizer):
    ex = P.encode(PROMPT, RESPONSE, tokenizer, 128)
    table = P.masking_table(ex, tokenizer)
    assert list(table.columns) == ["position", "token", "id", "attention_mask",
                                   "label", "role"]
    assert table.attention_mask.tolist() == ex["attention_mask"]
    assert (table.role == "learned").sum() == sum(l != -100 for l in ex["labels"])
    assert table.iloc[-1].token == "<|im_end|>"


@pytest.mark.parametrize("changes", [{}, {"padding": "max_length"},
                                     {"pad_to_multiple_of": 1}])
def test_training_collator_pads_as_the_config_says(tiny_cfg, tokenizer, changes):
    """make_collator's batches, built by hand: right padding with the pad
    id, mask 0 and label -100 there, to the width the config implies."""
    cfg = tiny_cfg.replace(**changes)
    exs = [P.encode("1790, George Washington (No party):", r, tokenizer,
                    cfg.max_length)
           for r in ("Hi.", "A much longer response " * 3, "Mid length one.")]
    longest = max(len(e["input_ids"]) for e in exs)
    width = (cfg.max_length if cfg.padding == "max_length" else
             -(-longest // cfg.pad_to_multiple_of) * cfg.pad_to_multiple_of)
    pad = tokenizer.pad_token_id
    want = {"input_ids": [e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in exs],
            "attention_mask": [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in exs],
            "labels": [e["labels"] + [-100] * (width - len(e["labels"])) for e in exs]}
    hf = P.make_collator(tokenizer, cfg)(exs)
    assert sorted(hf.keys()) == sorted(want)
    for k in want:
        assert torch.equal(hf[k], torch.tensor(want[k])), k
