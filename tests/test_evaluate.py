import contextlib
import math

import numpy as np
import pytest
import torch

from lorabook import evaluate as E
from lorabook import generation as G
from lorabook.sotu import prompts as S
from lorabook import model as M
from lorabook import preprocess as P
from lorabook.config import LorabookError


@pytest.fixture(scope="module")
def scored(tiny_cfg, tokenizer):
    """A tiny 8-bit LoRA model and a handful of encoded samples."""
    from datasets import Dataset
    model = M.load_model(tiny_cfg)
    texts = [("1790, George Washington (No party):\nHello there.",
              "We meet again in peace."),
             ("1861, Abraham Lincoln (Republican):\nThe war goes on.",
              "It is a long and hard struggle for the Union, and for all."),
             ("2021, Joseph R. Biden (Democratic):\nAmerica is back.", "Yes.")]
    rows = [P.encode(p, r, tokenizer, 96) for p, r in texts]
    return model, Dataset.from_list(rows), rows


def test_perplexity_matches_hand_computation(scored, tokenizer):
    model, ds, rows = scored
    sums, counts = E.response_nll(model, ds, P.collator(tokenizer), 2)
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for r in rows:       # one sample at a time, token by token
            logits = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            for t in range(1, len(r["labels"])):
                if r["labels"][t] != -100:
                    total -= logp[t - 1, r["labels"][t]].item()
                    n += 1
    assert counts.sum() == n
    assert E.perplexity(sums.sum(), counts.sum()) == pytest.approx(
        math.exp(total / n), rel=1e-4)


@pytest.mark.parametrize("bs", [1, 2, 3])
def test_perplexity_independent_of_batch_and_padding(scored, tokenizer, bs):
    model, ds, _ = scored
    ref = E.response_nll(model, ds, P.collator(tokenizer), 3)
    dyn = E.response_nll(model, ds, P.collator(tokenizer), bs)
    fixed = E.response_nll(model, ds, P.collator(tokenizer, "max_length", 96), bs)
    for s, c in (dyn, fixed):
        assert (c == ref[1]).all()
        np.testing.assert_allclose(s, ref[0], rtol=1e-4)


@pytest.mark.parametrize("bs", [1, 2])
def test_fast_response_nll_equals_full_logits(scored, tokenizer, bs):
    """The label-only, length-sorted path gives each example (in the
    dataset's order) what full logits in corpus order give, with the
    adapter on and off."""
    from lorabook.speed.label_only import backbone_and_head
    model, ds, _ = scored
    assert backbone_and_head(model) is not None   # the fast path runs
    collator = P.collator(tokenizer)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    g = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():      # a trained-looking adapter, not B = 0
            for p in lora_b:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        results = []
        for ctx in (model.disable_adapter, contextlib.nullcontext):
            with ctx():
                fast = E.response_nll(model, ds, collator, bs)
                plain = E._response_nll_plain(model, ds, collator, bs)
            assert (fast[1] == plain[1]).all()
            np.testing.assert_allclose(fast[0], plain[0], rtol=1e-4)
            results.append(fast[0])
        assert not np.allclose(results[0], results[1])   # adapter mattered
    finally:
        with torch.no_grad():
            for p in lora_b:
                p.zero_()


def test_perplexity_overflow_guard():
    assert E.perplexity(1e6, 10) == float("inf")
    with pytest.raises(LorabookError):
        E.perplexity(1.0, 0)


def test_bootstrap_ci_matches_the_ratio_estimators_spread():
    """The percentile CI of token-weighted perplexity, resampling examples
    (sum and count together), is for many examples the delta-method
    interval exp(r +- 1.96 se) of the ratio r = sum(nll) / sum(tokens)."""
    rng = np.random.default_rng(0)
    n = 400
    counts = rng.integers(5, 40, n)
    sums = counts * rng.uniform(1.5, 3.5, n)      # per-token loss varies
    r = sums.sum() / counts.sum()
    se = np.sqrt(((sums - r * counts) ** 2).sum()) / counts.sum()
    lo, hi = E.bootstrap_ci(sums, counts, 4000)
    assert np.log(lo) == pytest.approx(r - 1.96 * se, abs=0.15 * se)
    assert np.log(hi) == pytest.approx(r + 1.96 * se, abs=0.15 * se)
    # Examples with the same per-token loss leave nothing to resample.
    lo, hi = E.bootstrap_ci(counts * 2.0, counts, 200)
    assert lo == pytest.approx(np.exp(2.0)) and hi == pytest.approx(np.exp(2.0))


def test_generation_stops_at_eos_and_cuts_there(scored, tokenizer,
                                                monkeypatch):
    """Forced continuations: the first prompt's model says two tokens and
    EOS, the second never stops. The text is cut at EOS (nothing after it,
    not even padding), `stopped` says who stopped, n_tokens counts the EOS."""
    from transformers import LogitsProcessor, LogitsProcessorList
    model, _, _ = scored
    a, b = (tokenizer(w, add_special_tokens=False)["input_ids"][0]
            for w in (" peace", " war"))
    eos = tokenizer.eos_token_id
    plan = [[a, a, eos, b, b, b], [b] * 6]

    class Force(LogitsProcessor):
        def __init__(self, width):
            self.width = width

        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - self.width
            forced = torch.full_like(scores, -1e9)
            for row in range(scores.shape[0]):
                forced[row, plan[row][step]] = 0
            return forced
    real = model.generate

    def generate(input_ids, **kw):
        return real(input_ids=input_ids, logits_processor=LogitsProcessorList(
            [Force(input_ids.shape[1])]), **kw)
    monkeypatch.setattr(model, "generate", generate)
    g = G.generate(model, tokenizer, ["Hello.", "Hi there, longer."],
                   max_new_tokens=6)
    assert g[0] == dict(text=tokenizer.decode([a, a]).strip(), stopped=True,
                        n_tokens=3)
    assert g[1] == dict(text=tokenizer.decode([b] * 6).strip(), stopped=False,
                        n_tokens=6)


def test_generation_batched_and_stops(scored, tokenizer):
    model, _, _ = scored
    prompts = ["1790, George Washington (No party):\nHello.", "Hi."]
    a = G.generate(model, tokenizer, prompts, max_new_tokens=5)
    b = [G.generate(model, tokenizer, [p], max_new_tokens=5)[0] for p in prompts]
    assert [g["text"] for g in a] == [g["text"] for g in b]   # padding-safe
    assert all(g["n_tokens"] <= 5 for g in a)


def test_generation_batches_bounded_by_positions(scored, tokenizer,
                                                monkeypatch):
    """max_positions splits the prompts into batches of at most that many
    rows x (longest prompt + new tokens); each prompt is answered once, in
    order."""
    model, _, _ = scored
    prompts = [f"Prompt number {i}." for i in range(5)]
    longest = max(len(G.P.prompt_ids(p, tokenizer)) for p in prompts) + 4
    rows, real = [], model.generate

    def generate(input_ids, **kw):
        rows.append(input_ids.shape[0])
        return real(input_ids=input_ids, **kw)
    monkeypatch.setattr(model, "generate", generate)
    g = G.generate(model, tokenizer, prompts, max_new_tokens=4,
                   batch_size=len(prompts), max_positions=2 * longest)
    assert rows == [2, 2, 1] and len(g) == 5
    rows.clear()
    G.generate(model, tokenizer, prompts, max_new_tokens=4,
               batch_size=len(prompts), max_positions=1)     # at least one row
    assert rows == [1] * 5


@pytest.mark.slow
def test_evaluate_run_writes_metrics(tiny_cfg, tiny_run):
    res = E.evaluate_run(tiny_cfg, tiny_run, verbose=False)
    s = res["summary"]
    for k in ("base_test_perplexity", "finetuned_test_perplexity",
              "finetuned_test_perplexity_ci", "test_response_tokens",
              "rouge_l", "bleu", "style_accuracy"):
        assert k in s
    lo, hi = s["finetuned_test_perplexity_ci"]
    assert lo <= s["finetuned_test_perplexity"] <= hi
    gens = E.load_generations(tiny_run.path)
    assert len(gens) == tiny_cfg.n_generation_prompts + len(S.NEW_PROMPTS)
    assert all(r[k] is not None for r in gens for k in E.SYSTEMS)
    g = res["generation"]
    assert set(g["seconds"]) >= set(E.SYSTEMS)
    assert [r["decoding"] for r in g["decoding_comparison"]["rows"]] == [
        G.DECODING_NAME, *G.DECODING_ALTERNATIVES, "real texts"]
    st = res["style"]
    assert 0 <= st["real"]["balanced"] <= 1 and st["chance"] == pytest.approx(
        1 / len(st["eras"]))
    assert (tiny_run.path / "metrics.json").is_file()
    assert E.evaluate_run(tiny_cfg, tiny_run, verbose=False) == res  # cached


def _sample(i, year, president="George Washington", group=None,
            opening="An opening.", response="A response."):
    return dict(id=f"s{i}", group=group or f"{year}_{president}", year=year,
                president=president,
                prompt=f"{year}, {president} (No party):\n{opening}",
                response=response)


def test_sotu_prompts_parse_and_instruct():
    p = S.parse_sotu_prompt("1850, Millard Fillmore (Whig):\nThe harvest.")
    assert p == dict(year=1850, president="Millard Fillmore", party="Whig",
                     opening="The harvest.")
    assert S.parse_sotu_prompt("Hello there") is None
    told = G.instructed_prompt("1850, Millard Fillmore (Whig):\nThe harvest.")
    assert "State of the Union" in told and "Millard Fillmore" in told
    assert "1850" in told and told.endswith("The harvest.")
    # other data: the task said in general words, the prompt kept whole
    assert G.instructed_prompt("Q: why?").endswith("Q: why?")


def test_new_sotu_prompts_are_not_in_the_corpus():
    from lorabook import data as D
    from lorabook.config import load_config
    cfg = load_config("tiny")
    samples = D.load_samples(cfg.resolve(cfg.data_path), group_column="address",
                             min_samples=1)
    splits = dict(train=samples[:50], validation=[], test=samples[50:60])
    new = E.new_prompts(splits, samples)
    assert len(new) == len(S.NEW_PROMPTS)
    assert not any(p["pair_in_data"] for p in new)
    assert all(p["opening_overlap"] < 8 for p in new)
    # the check is real: a pair that is in the data is flagged
    fake = samples[:1]
    flagged = E.new_prompts(splits, [dict(fake[0], year=1841,
                                          president="William Henry Harrison")])
    assert flagged[0]["pair_in_data"]


def test_new_prompts_for_other_data_follow_the_stated_rule():
    train = [dict(id=f"t{i}", prompt=f"tell me about cats number {i}",
                  response="ok") for i in range(5)]
    test = [dict(id="a", prompt="tell me about cats please", response="r1"),
            dict(id="b", prompt="what is the boiling point of water",
                 response="r2"),
            dict(id="c", prompt="tell me about dogs", response="r3")]
    new = E.new_prompts(dict(train=train, validation=[], test=test), train,
                        k=2)
    # least like any training prompt first: b shares 0 words, c 3, a 4
    assert [p["id"] for p in new] == ["b", "c"]
    assert new[0]["reference"] == "r2"
    # a prompt shown already among the scored ones is passed over ...
    new = E.new_prompts(dict(train=train, validation=[], test=test), train,
                        k=2, shown=frozenset({"b"}))
    assert [p["id"] for p in new] == ["c", "a"]
    # ... unless too few would remain
    new = E.new_prompts(dict(train=train, validation=[], test=test), train,
                        k=3, shown=frozenset({"b"}))
    assert [p["id"] for p in new] == ["b", "c", "a"]
    text_only = [dict(id="x", prompt="", response="some text")] * 3
    new = E.new_prompts(dict(train=text_only, validation=[], test=text_only),
                        text_only, k=3)
    assert [p["prompt"] for p in new] == ["", "", ""]


def test_shown_prompts_spread_over_addresses_and_years():
    # 10 scored passages: 4 from one 1790 address, the rest one per address
    scored = [_sample(i, 1790, group="1790") for i in range(4)] + [
        _sample(4 + j, y) for j, y in enumerate((1820, 1861, 1900, 1950,
                                                 1990, 2020))]
    at = E.shown_prompts(scored, 4)
    groups = [scored[i]["group"] for i in at]
    assert len(set(groups)) == 4                 # one per address
    years = sorted(scored[i]["year"] for i in at)
    assert years[0] == 1790 and years[-1] == 2020   # both ends of time
    # fewer addresses than wanted: every address, then more passages
    at = E.shown_prompts(scored[:5], 3)
    assert len(at) == 3 and {scored[i]["group"] for i in at} == {
        "1790", scored[4]["group"]}


def test_few_shot_uses_the_nearest_year_and_chat_turns(tokenizer):
    train = [_sample(0, 1790, response="Early."),
             _sample(1, 1901, response="Middle."),
             _sample(2, 2001, response="Late.")]
    turns = G.few_shot("1910, William H Taft (Republican):\nHello.", train)
    assert len(turns) == 3 and turns[1] == "Middle."
    assert "1901" in turns[0] and "1910" in turns[2]
    ids = G.chat_ids(turns, tokenizer)
    text = tokenizer.decode(ids)
    assert text.index("Middle.") < text.index("Hello.")
    assert ids[-len(E.P.prompt_ids(turns[2], tokenizer)):] == \
        E.P.prompt_ids(turns[2], tokenizer)
    with pytest.raises(LorabookError):
        G.chat_ids(turns[:2], tokenizer)


def test_a_configs_instruction_replaces_the_corpuss(tokenizer):
    """`instruction` (config, `lorabook new --instruction`): the worked
    example and the task are both asked in its words, for any corpus; the
    prompt goes where `{prompt}` stands (other braces stay), else after it."""
    from lorabook import data as D
    from lorabook.config import load_config
    from lorabook.corpus import fill_instruction
    train = [dict(id="t", prompt="Define “cat”.", response="A small feline.")]
    corpus = D.corpus_for(train, "Give a dictionary {gloss} for: {prompt}")
    turns = G.few_shot("Define “dog”.", train, corpus)
    assert turns == ["Give a dictionary {gloss} for: Define “cat”.",
                     "A small feline.", "Give a dictionary {gloss} for: Define “dog”."]
    assert D.corpus_for(train) is D.corpus_for(train, None)      # unchanged
    assert "Write the reply to the following" in G.few_shot("x", train)[2]
    assert fill_instruction("Write a fortune.", "") == "Write a fortune."
    assert fill_instruction("Answer it.", "Q?") == "Answer it.\n\nQ?"
    sotu = [_sample(0, 1850)]
    told = D.corpus_for(sotu, "Speak: {prompt}").instruction(sotu[0]["prompt"])
    assert told == "Speak: " + sotu[0]["prompt"]
    # an evaluation setting: a new evaluation, the same training run
    a, b = load_config("tiny"), load_config("tiny", instruction="Speak.")
    assert a.train_hash() == b.train_hash() and a.hash() != b.hash()
    with pytest.raises(LorabookError, match="instruction"):
        load_config("tiny", instruction="")
    ds = [dict(id="t", labels=[-100, 5, 6])]
    row = G.instructed_dataset(ds, train, train, tokenizer, corpus)[0]
    assert "dictionary {gloss}" in tokenizer.decode(row["input_ids"][:-2])


def test_instructed_perplexity_scores_the_same_response_tokens(
        scored, tokenizer, tiny_cfg):
    """The base model told the task is scored on exactly the tokens the
    bare-prompt perplexity scores; only the prompt before them changes."""
    model, ds, _ = scored
    samples = [_sample(i, y, opening=o) for i, (y, o) in enumerate(
        [(1790, "Hello there."), (1861, "The war goes on."),
         (2021, "America is back.")])]
    ds = ds.add_column("id", [s["id"] for s in samples])
    train = [_sample(9, 1800, response="We are at peace.")]
    told = G.instructed_dataset(ds, samples, train, tokenizer)
    for a, b in zip(ds, told):
        resp = [t for t in a["labels"] if t != -100]
        assert [t for t in b["labels"] if t != -100] == resp
        assert b["input_ids"][-len(resp):] == resp
        text = tokenizer.decode(b["input_ids"][:-len(resp)])
        assert "We are at peace." in text and "State of the Union" in text
    out = E.score_split(model, ds, P.collator(tokenizer), tiny_cfg,
                        instructed=told)
    assert set(out) >= {"base", "base_instructed", "finetuned"}
    assert out["base_instructed"]["perplexity"] != out["base"]["perplexity"]
    lo, hi = out["base_instructed"]["ci_low"], out["base_instructed"]["ci_high"]
    assert lo <= out["base_instructed"]["perplexity"] <= hi


@pytest.mark.slow
def test_evaluate_run_refuses_data_that_no_longer_gives_the_split(
        tiny_cfg, tiny_run, tmp_path, monkeypatch):
    """A validation passage the run was trained with is gone from the data:
    evaluate_run stops with a LorabookError naming split.json before it
    scores anything (a model load here would mean it went on)."""
    import json
    import shutil
    from lorabook import train as T
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_copy,
                    ignore=shutil.ignore_patterns("checkpoints", "eval.json"))
    gone = T.read_json(run_copy / "split.json")["validation"][0]
    src = tiny_cfg.resolve(tiny_cfg.data_path)
    data = tmp_path / "data.jsonl"
    kept = [line for line in src.read_text().splitlines()
            if json.loads(line)["id"] != gone]
    assert len(kept) == len(src.read_text().splitlines()) - 1
    data.write_text("\n".join(kept) + "\n")
    cfg = tiny_cfg.replace(data_path=str(data), output_dir=str(run_copy))

    def no_model(*a, **kw):
        raise AssertionError("evaluate_run went on to load the model")
    monkeypatch.setattr(M, "load_trained_model", no_model)
    with pytest.raises(LorabookError, match=r"no longer gives the split.*split\.json"):
        E.evaluate_run(cfg, T.load_run(run_copy), verbose=False, force=True)
    assert not (run_copy / "eval.json").exists()
