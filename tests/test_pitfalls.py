"""The pitfalls of appendix A2: the wrong way is wrong, ours is right."""
import math

import pytest
import torch

from lorabook import model as M
from lorabook.book import leakage as LK
from lorabook.book import loop as L
from lorabook.book import pitfalls as F
from lorabook import preprocess as P
from lorabook.config import LorabookError

SAMPLES = [
    dict(id=f"s{i}", group=f"a{i % 6}",
         prompt=f"{1790 + i}, George Washington (No party):\n"
                "The abundant fruits of another year have blessed us.",
         response=("The progress of public credit is witnessed by a rise "
                   "of American stock abroad. " * (1 + i % 3)).strip())
    for i in range(12)
]


@pytest.fixture(scope="module")
def encoded(tokenizer):
    from datasets import Dataset
    return Dataset.from_list([P.encode(s["prompt"], s["response"], tokenizer,
                                       96) for s in SAMPLES])


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg):
    return M.load_model(tiny_cfg, quantize=False)


def test_find_sublist():
    assert F.find_sublist([1, 2, 3, 2, 3], [2, 3]) == 3
    assert F.find_sublist([1, 2, 3], [3, 4]) == -1


def test_trailing_space_template_masks_everything(tokenizer):
    ds = F.template_search_dataset(SAMPLES, tokenizer, "alpaca",
                                   "### Response: ", 96)
    assert not any(ds["found"])
    assert all(all(l == -100 for l in labels) for labels in ds["labels"])
    with pytest.raises(LorabookError, match="no learned token"):
        P.check_learned_tokens(ds)


def test_template_without_space_and_chatml_are_found(tokenizer):
    for layout, template in (("alpaca", "### Response:"),
                             ("chatml", "<|im_start|>assistant\n")):
        ds = F.template_search_dataset(SAMPLES, tokenizer, layout, template,
                                       96)
        assert all(ds["found"])
        assert P.check_learned_tokens(ds) > 0
    # With ChatML the search finds exactly lorabook's boundary here.
    for s, labels in zip(SAMPLES, ds["labels"]):
        ours = P.encode(s["prompt"], s["response"], tokenizer, 96)["labels"]
        assert [l for l in labels if l != -100] == \
            [l for l in ours if l != -100]


def test_boundary_comparison_rows(tokenizer):
    rows = F.boundary_comparison(SAMPLES, tokenizer, 96)
    assert rows[0]["kept_share"] == 1.0 and rows[0]["fully_masked"] == 0
    trailing = rows[-1]
    assert "trailing space" in trailing["method"]
    assert trailing["template_found"] == 0
    assert trailing["fully_masked"] == len(SAMPLES)
    assert trailing["learned_tokens"] == 0


def test_fully_masked_batch_has_no_loss(tiny_model, tokenizer):
    ds = F.template_search_dataset(SAMPLES, tokenizer, "alpaca",
                                   "### Response: ", 96)
    assert math.isnan(F.batch_loss(tiny_model, ds, P.collator(tokenizer)))


def test_eos_masked_by_id_when_pad_is_eos(encoded, tokenizer):
    assert F.pad_is_eos(tokenizer).pad_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id  # not mutated
    rows = F.eos_label_counts(encoded, tokenizer, batch_size=5)
    n = len(SAMPLES)
    assert [r["examples_ending_in_eos"] for r in rows] == [n] * 4
    assert rows[0]["eos_learned"] == n and rows[1]["eos_learned"] == n
    assert rows[2]["eos_learned"] == 0 and rows[3]["eos_learned"] == 0


def test_perplexity_variants(tiny_model, encoded, tokenizer):
    rows = F.perplexity_variants(tiny_model, encoded, P.collator(tokenizer),
                                 batch_sizes=(1, 4, 12))
    ref = rows[0]["token_weighted"]
    for r in rows:
        assert r["token_weighted"] == pytest.approx(ref, rel=1e-4)
    # Without padding (batch size 1) padding cannot be scored ...
    assert rows[0]["padding_tokens"] == 0
    assert rows[0]["padding_scored"] == pytest.approx(ref, rel=1e-4)
    # ... with it, the wrong ways move with the batch size.
    assert rows[2]["padding_tokens"] > 0
    assert abs(rows[2]["padding_scored"] - ref) / ref > 1e-3
    assert abs(rows[0]["mean_of_batch_means"] - ref) / ref > 1e-3
    assert abs(rows[0]["mean_of_sample_ppl"] - ref) / ref > 1e-3


def test_normalised_perplexity(tiny_model, encoded, tokenizer):
    r = F.normalised_perplexity(tiny_model, encoded, tokenizer,
                                P.collator(tokenizer), batch_size=5)
    text = " ".join(s["response"] for s in SAMPLES)
    assert r["words"] == len(text.split())
    assert r["bytes"] == len(text.encode()) - (len(SAMPLES) - 1)
    assert r["word_perplexity"] == pytest.approx(
        math.exp(r["nll"] / r["words"]))
    assert r["bits_per_byte"] == pytest.approx(
        math.log2(r["byte_perplexity"]))
    assert r["word_perplexity"] > r["token_perplexity"] > r["byte_perplexity"]


def test_label_names_demo(tiny_model, encoded, tokenizer):
    rows = F.label_names_demo(tiny_model, encoded.select(range(4)),
                              P.collator(tokenizer), batch_size=4)
    default, explicit, empty, info = rows
    assert explicit["eval_loss"] is not None
    assert empty["eval_loss"] is None and empty["reported"] == []
    # transformers 5.24 looks the labels up on the unwrapped model.
    assert default["trainer_label_names"] == "['labels']"
    assert default["eval_loss"] == pytest.approx(explicit["eval_loss"])
    assert info["peft_class"] == "PeftModelForCausalLM"


def test_passage_vs_address_split():
    samples = [dict(id=f"{g}-{i}", group=f"g{g}", response=f"word{g} x{i} y")
               for g in range(20) for i in range(10)]
    sp = LK.passage_vs_address_split(samples, seed=0, n_test=10, n_train=60)
    test_ids = {s["id"] for s in sp["test"]}
    test_groups = set(sp["test_groups"])
    assert {s["group"] for s in sp["test"]} <= test_groups
    for split in ("address", "passage"):
        assert len(sp[split]) == 60
        assert not test_ids & {s["id"] for s in sp[split]}
    assert not test_groups & {s["group"] for s in sp["address"]}
    # Seeded: the same draw twice.
    again = LK.passage_vs_address_split(samples, seed=0, n_test=10, n_train=60)
    assert [s["id"] for s in again["passage"]] == \
        [s["id"] for s in sp["passage"]]


def test_overlap_stats():
    train = [dict(group="a", response="the treaty of ghent was signed")]
    test = [dict(group="a", response="the treaty of ghent is old")]
    st = LK.overlap_stats(test, train)
    assert st["mean_longest_run"] == 4
    assert st["ngram_seen_share"] == pytest.approx(2 / 4)
    assert st["test_addresses_in_train"] == 1
    rows = LK.split_leakage(
        [dict(id=f"{g}-{i}", group=f"g{g}", response=f"w{g} {i} a b")
         for g in range(20) for i in range(10)],
        seed=0, n_test=10, n_train=50, repeats=2)
    by = {r["split"]: r for r in rows}
    assert by["by address"]["test_addresses_in_train"] == 0
    assert by["by passage"]["test_addresses_in_train"] > 0


# --------------------------------------------------------------------------
# The trained comparisons (fp32 tiny model: seconds; 8-bit is slower here)
# --------------------------------------------------------------------------

def test_trained_demo_sizes(tiny_cfg):
    from lorabook.config import load_config
    tiny = L.trained_demo_sizes(tiny_cfg)
    default = L.trained_demo_sizes(load_config("default"))
    assert set(tiny) == set(default)
    for k in ("eos_train", "eos_prompts", "leak_train", "leak_test",
              "leak_test_groups", "leak_groups"):
        assert tiny[k] < default[k]
    assert default["leak_test_groups"] < default["leak_groups"]
    # Real demonstrations, not smoke tests: at least a dozen optimizer steps.
    assert default["eos_train"] >= 12 * 8 and default["leak_train"] >= 12 * 8


def test_seeded_sample(encoded):
    items = list(range(50))
    a = L.seeded_sample(items, 10, 3)
    assert a == sorted(a) and len(set(a)) == 10
    assert a == L.seeded_sample(items, 10, 3)
    assert a != L.seeded_sample(items, 10, 4)
    ds = L.seeded_sample(encoded, 5, 0)
    assert len(ds) == 5 and "input_ids" in ds.column_names


def test_length_grouped_batches():
    lengths = [5, 50, 7, 40, 9, 30, 11, 20, 13]
    from lorabook.book.loop import length_grouped_batches
    plan = length_grouped_batches(lengths, 4, epochs=2, seed=0)
    assert len(plan) == 2 * 3
    for e in range(2):
        assert sorted(i for b in plan[3 * e:3 * e + 3] for i in b) == \
            list(range(len(lengths)))
    assert plan == length_grouped_batches(lengths, 4, epochs=2, seed=0)


def test_train_lora_slice(tiny_cfg, encoded, tokenizer):
    cfg = tiny_cfg.replace(load_in_8bit=False)
    model, info = L.train_lora_slice(cfg, encoded, P.collator(tokenizer),
                                     epochs=2,
                                     eos_token_id=tokenizer.eos_token_id)
    n = len(encoded)
    assert info["steps"] == 2 * math.ceil(n / cfg.batch_size)
    assert len(info["losses"]) == info["steps"]
    assert all(math.isfinite(l) for l in info["losses"])
    assert info["eos_labels"] == 2 * n              # every sample ends in EOS
    assert not model.training
    # The adapters moved away from B = 0: the model is no longer the base.
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)


def test_eos_training_comparison(tiny_cfg, encoded, tokenizer):
    # A high learning rate so that three epochs on 12 samples move the
    # tiny random model; everything else is the tiny preset's.
    cfg = tiny_cfg.replace(load_in_8bit=False, learning_rate=1e-2)
    held_out = SAMPLES[:4]
    rows = F.eos_training_comparison(cfg, encoded, held_out, tokenizer,
                                     epochs=3, max_new_tokens=6,
                                     gen_batch_size=4)
    base, wrong, ours = rows
    assert [r["model"] for r in rows[1:]] == [name for name, _ in F.EOS_CASES]
    n = len(encoded)
    # The wrong way never sees an EOS label; ours sees one per sample.
    assert base["eos_labels_trained"] == 0 and wrong["eos_labels_trained"] == 0
    assert ours["eos_labels_trained"] == 3 * n
    assert wrong["train_steps"] == ours["train_steps"] > 0
    for r in rows:
        assert r["prompts"] == len(held_out) == len(r["generations"])
        assert 0 <= r["stop_share"] <= 1
        assert 1 <= r["mean_new_tokens"] <= 6
        assert 0 < r["eos_probability"] < 1
    # Trained on its EOS labels, the model puts more probability on the EOS
    # after a held-out response than the model trained with them masked.
    assert ours["eos_probability"] > 1.03 * wrong["eos_probability"]


WORDS = ("apple river stone cloud horse garden silver winter market bridge "
         "forest candle harbor letter mountain thunder velvet wagon castle "
         "meadow").split()


def test_passage_vs_address_split_pool():
    samples = [dict(id=f"{g}-{i}", group=f"g{g}", response=f"w{g} {i}")
               for g in range(20) for i in range(10)]
    sp = LK.passage_vs_address_split(samples, seed=0, n_test=8, n_train=30,
                                    n_test_groups=2, n_groups=5)
    pool = {s["group"] for s in sp["test"] + sp["address"] + sp["passage"]}
    assert len(pool) <= 5 and len(sp["test_groups"]) == 2
    assert {s["group"] for s in sp["test"]} <= set(sp["test_groups"])
    assert not set(sp["test_groups"]) & {s["group"] for s in sp["address"]}
    with pytest.raises(LorabookError, match="passages outside"):
        LK.passage_vs_address_split(samples, seed=0, n_test=8, n_train=31,
                                   n_test_groups=2, n_groups=5)


def test_leakage_training_comparison(tiny_cfg, tokenizer):
    # Each address has its own two words: only the passage split sees the
    # words of the test addresses, so it must score the test set better.
    samples = [dict(id=f"{g}-{i}", group=f"g{g}", prompt=f"Speech {g}:",
                    response=" ".join([WORDS[2 * g], WORDS[2 * g + 1]]
                                      * (2 + i % 3)))
               for g in range(10) for i in range(16)]
    # q,v adapters as this test was tuned for: at 1e-2 adapters on every
    # linear layer of the tiny random model overshoot in 3 epochs.
    cfg = tiny_cfg.replace(load_in_8bit=False, learning_rate=1e-2,
                           target_modules=None)
    res = LK.leakage_training_comparison(cfg, samples, tokenizer, n_train=24,
                                        n_test=8, n_test_groups=2,
                                        n_groups=4, epochs=3)
    by = {r["model"]: r for r in res["rows"]}
    assert list(by) == ["base", "address split", "passage split"]
    base, a, p = by["base"], by["address split"], by["passage split"]
    assert res["test_passages"] == 8 and len(res["test_groups"]) == 2
    assert sum(res["test_per_group"].values()) == 8
    assert a["train_samples"] == p["train_samples"] == 24
    assert a["train_steps"] == p["train_steps"] > 0
    assert a["train_from_test_addresses"] == 0
    assert p["train_from_test_addresses"] > 0
    assert a["ngram_seen_share"] == 0 and p["ngram_seen_share"] > 0
    for r in res["rows"]:
        assert r["ci_low"] <= r["perplexity"] <= r["ci_high"]
    # Training helps on both splits, and the leaked one flatters the result.
    assert a["perplexity"] < base["perplexity"]
    assert res["ratio"] == pytest.approx(p["perplexity"] / a["perplexity"])
    assert res["ratio"] < 0.97
    assert res["ratio_ci"][1] < 1 and res["p_passage_lower"] > 0.95
