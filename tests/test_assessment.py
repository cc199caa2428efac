"""The written assessment of chapter 5 follows the numbers it is given.

Each test renders the assessment from numbers that point one way, then
from the same numbers flipped, and checks that the words flip too: no
sentence may print unchanged when its numbers say the opposite.
"""
import copy

import pytest

from lorabook.book import assessment as A


def sys_metrics(**kw):
    m = dict(rouge_l=0.15, bleu=1.2, mean_words=40.0, stop_rate=0.5,
             loop_rate=0.0, echo_rate=0.0, we_rate=0.4,
             anachronism_rate=0.0, era_balanced=0.6)
    m.update(kw)
    return m


def shown_row(**kw):
    r = dict(prompt="1850, Millard Fillmore (Whig):\nThe harvest was good.",
             year=1850, reference="Our commerce grows with every season.",
             base="Sure! Here is a summary.", base_instructed="The harvest "
             "was good, and the nation prospered.",
             finetuned="Our commerce grows with every season of peace.")
    r.update(kw)
    return r


@pytest.fixture
def facts():
    shown = [shown_row()]
    return dict(
        ppl=dict(base=30.0, finetuned=20.0, base_ci=(28.0, 32.0),
                 finetuned_ci=(19.0, 21.0), p_better=1.0),
        systems=dict(base=sys_metrics(rouge_l=0.10, era_balanced=0.3),
                     base_instructed=sys_metrics(rouge_l=0.12,
                                                 mean_words=60.0,
                                                 stop_rate=0.2,
                                                 era_balanced=0.4),
                     finetuned=sys_metrics()),
        reference=dict(mean_words=44.0, we_rate=0.5),
        judge=dict(real_accuracy=0.9, real_balanced=0.85, majority=0.55,
                   chance=1 / 3),
        n=64, overlap=dict(max_overlap=8, copies=0),
        quotes=A.pick_quotes(shown), decoding="greedy decoding")


def text(f):
    return "\n".join(A.write(f))


def test_fmt_keeps_at_most_digits():
    assert A.fmt(0.3990199509975499) == "0.399"
    assert A.fmt(9.649122807017544e-05) == "9.65e-05" or \
        len(A.fmt(9.649122807017544e-05).strip("0.")) <= 3
    assert A.fmt(123.456) == "123"
    assert A.fmt(12345.6) == "12,346"       # no decimals added
    assert A.fmt(25.7) == "25.7"
    assert A.fmt(7) == "7"
    assert A.pct(0.4375) == "44%"


def test_perplexity_direction_flips(facts):
    assert "is lower than the base model's" in text(facts)
    assert "more predictable" in text(facts)
    flipped = copy.deepcopy(facts)
    flipped["ppl"].update(base=20.0, finetuned=30.0, base_ci=(19.0, 21.0),
                          finetuned_ci=(28.0, 32.0), p_better=0.0)
    t = text(flipped)
    assert "is higher than the base model's" in t
    assert "less predictable" in t and "more predictable" not in t
    overlap = copy.deepcopy(facts)
    overlap["ppl"]["finetuned_ci"] = (19.0, 29.0)
    assert "intervals overlap" in text(overlap)
    assert "did not clearly change" in text(overlap)


def test_length_and_stopping_flip(facts):
    t = text(facts)
    assert "shorter than the real ones" in t
    assert "closer to their length than the instructed" in t
    assert "more often than the instructed base model" in t
    f = copy.deepcopy(facts)
    f["systems"]["finetuned"].update(mean_words=70.0, stop_rate=0.1)
    t = text(f)
    assert "longer than the real ones" in t
    assert "further from their length than the instructed" in t
    assert "less often than the instructed base model" in t


def test_era_verdicts_flip(facts):
    t = text(facts)
    assert "so it can tell the eras apart" in t
    assert "above the instructed base model" in t
    assert "follows the year it is given" in t
    f = copy.deepcopy(facts)
    f["systems"]["finetuned"]["era_balanced"] = 0.2
    t = text(f)
    assert "below chance" in t and "below the instructed base model" in t
    assert "follows the year it is given" not in t
    weak = copy.deepcopy(facts)
    weak["judge"].update(real_accuracy=0.60, real_balanced=0.45)
    t = text(weak)
    assert "The era judge is not used" in t
    assert "above chance" not in t and "below chance" not in t


def test_loops_sentence_follows_counts(facts):
    assert "No generation of any model loops" in text(facts)
    looping = "the war has been won " * 6
    f = copy.deepcopy(facts)
    f["systems"]["finetuned"]["loop_rate"] = 0.25
    f["quotes"] = A.pick_quotes([shown_row(finetuned=looping)])
    t = text(f)
    assert "Loops remain" in t and "25% of the generations of the " \
        "fine-tuned model" in t
    assert "the war has been won the war" in t
    assert "No generation" not in t


def test_rouge_and_bleu_directions_are_separate(facts):
    f = copy.deepcopy(facts)
    f["systems"]["finetuned"].update(rouge_l=0.20, bleu=0.5)
    f["systems"]["base_instructed"].update(rouge_l=0.10, bleu=0.9)
    t = text(f)
    assert "ROUGE-L (0.200) is higher than the" in t
    assert "BLEU (0.500) lower than the instructed base model's (0.900)" in t
    f["systems"]["finetuned"].update(rouge_l=0.05, bleu=2.0)
    t = text(f)
    assert "ROUGE-L (0.0500) is lower than" in t
    assert "BLEU (2.00) higher than the instructed base model's (0.900)" in t


def test_copying_echo_and_anachronism_follow_the_outputs(facts):
    t = text(facts)
    assert "does not copy its training data" in t
    assert "None of the shown fine-tuned generations does" in t
    f = copy.deepcopy(facts)
    f["overlap"] = dict(max_overlap=20, copies=3)
    f["systems"]["finetuned"]["echo_rate"] = 0.5
    f["systems"]["finetuned"]["anachronism_rate"] = 0.1
    row = shown_row(prompt="1905, Theodore Roosevelt (Republican):\n"
                           "The Navy must be built up without delay.",
                    year=1905,
                    finetuned="The Navy must be built up without delay, and "
                              "a treaty with the Soviet Union signed.")
    f["quotes"] = A.pick_quotes([row])
    t = text(f)
    assert "3 of its 64 generations copy 12 or more words" in t
    assert "(1905, Theodore Roosevelt (Republican), 8 words)" in t
    assert "mentions 'soviet'" in t
    assert "50% of the fine-tuned" in t


def test_instruction_verdict_flips(facts):
    assert "raises its ROUGE-L" in text(facts)
    assert "fairer baseline" in text(facts)
    f = copy.deepcopy(facts)
    f["systems"]["base_instructed"]["rouge_l"] = 0.05
    t = text(f)
    assert "lowers its ROUGE-L" in t and "bare prompt served it better" in t


def test_quotes_follow_their_rules():
    rows = [shown_row(reference="alpha beta gamma delta",
                      finetuned="alpha beta gamma delta"),
            shown_row(reference="alpha beta gamma delta",
                      finetuned="nothing in common here"),
            shown_row(reference=None, finetuned="x " * 3)]
    q = A.pick_quotes(rows)
    assert q["best"]["row"] is rows[0] and q["best"]["value"] == 1.0
    assert "loop" not in q and "echo" not in q and "anachronism" not in q
    assert A.pick_quotes([]) == {}


def test_no_shared_words_is_said_plainly(facts):
    f = copy.deepcopy(facts)
    f["quotes"] = A.pick_quotes([shown_row(finetuned="zzz qqq")])
    t = text(f)
    assert "No shown fine-tuned generation shares" in t
    assert "The president wrote" not in t
    assert "The president wrote" in text(facts)


def test_first_person_plural_verdict_flips(facts):
    f = copy.deepcopy(facts)
    f["reference"]["we_rate"] = 0.5
    f["systems"]["base_instructed"]["we_rate"] = 0.3
    f["systems"]["finetuned"]["we_rate"] = 0.1
    assert "moved the voice away from" in text(f)
    f["systems"]["finetuned"]["we_rate"] = 0.45
    assert "the fine-tuned voice is closer to" in text(f)
    f["systems"]["finetuned"]["we_rate"] = 0.31
    t = text(f)
    assert "away from" not in t and "voice is closer" not in t


def _res(era_ci, we_ci, words=40.0):
    test = dict(base=dict(perplexity=40.0, ci_low=38.0, ci_high=42.0),
                finetuned=dict(perplexity=30.0, ci_low=28.0, ci_high=32.0))
    gen = dict(finetuned=dict(mean_words=words, stop_rate=0.9, loop_rate=0.0,
                              anachronism_rate=0.0),
               reference=dict(mean_words=44.0))
    style = dict(real=dict(balanced=0.8), paired=dict(
        era=dict(a=0.7, b=0.6, difference=0.1, ci_low=era_ci[0], ci_high=era_ci[1]),
        we=dict(a=0.4, b=0.2, real=0.45, gap=0.15, ci_low=we_ci[0],
                ci_high=we_ci[1])))
    mem = dict(k=5, base=dict(real=dict(share_prefix_k=0.3),
                              control=dict(share_prefix_k=0.0)))
    return dict(test=test, generation=gen, style=style, memorization=mem)


def test_conclusion_verdicts_follow_the_intervals():
    m = dict(n_train=1023, epochs=3)
    text = A.conclusion(_res((0.02, 0.2), (0.05, 0.3)), m, None, None)
    assert "**Voice: reached.**" in text and "**Era: reached.**" in text
    assert "**Length: reached.**" in text and "**Prediction: reached.**" in text
    assert "part of both perplexities is recall" in text
    text = A.conclusion(_res((-0.1, 0.2), (-0.3, -0.05), words=20.0), m, None, None)
    assert "**Voice: not reached.**" in text and "**Era: not reached.**" in text
    assert "**Length: not reached.**" in text


def test_recipe_verdict_names_the_build_recipe_and_flips():
    from lorabook.config import load_config
    cfg = load_config("default")
    dec = dict(era_balanced=0.7, base_era_balanced=0.6, era_diff=0.1,
               era_ci=[0.02, 0.2], we_share=0.4, base_we_share=0.2,
               real_we_share=0.45, we_gap=0.2, we_ci=[0.05, 0.3],
               mean_words=40.0, real_mean_words=44.0)
    rs = dict(recipes={
        "mine": dict(fields=dict(target_modules=cfg.target_modules,
                                 learning_rate=cfg.learning_rate),
                     best_val_loss=3.2, decodings={"d": dec}),
        "other": dict(fields=dict(target_modules=["q_proj"],
                                  learning_rate=cfg.learning_rate),
                      best_val_loss=3.1, decodings={})})
    text = A.recipe_verdict(rs, cfg, decoding="d")
    assert "\u201cmine\u201d" in text and "above the lowest (\u201cother\u201d)" in text
    assert "beats the instructed base model" in text and "is closer" in text
    worse = dict(dec, era_ci=[-0.2, -0.01], we_ci=[-0.1, 0.1])
    rs["recipes"]["mine"]["decodings"]["d"] = worse
    text = A.recipe_verdict(rs, cfg, decoding="d")
    assert "does worse than the instructed base" in text
    assert "not reliably closer" in text
