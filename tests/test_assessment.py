"""The computed verdicts of chapters 3 and 5 follow the numbers they are
given: each test renders them from numbers that point one way, then from
the same numbers flipped, and checks that the words flip too.
"""
from lorabook.book import assessment as A


def test_fmt_keeps_at_most_digits():
    assert A.fmt(0.3990199509975499) == "0.399"
    assert A.fmt(9.649122807017544e-05) == "9.65e-05" or \
        len(A.fmt(9.649122807017544e-05).strip("0.")) <= 3
    assert A.fmt(123.456) == "123"
    assert A.fmt(12345.6) == "12,346"       # no decimals added
    assert A.fmt(25.7) == "25.7"
    assert A.fmt(7) == "7"
    assert A.pct(0.4375) == "44%"


def _res(era_ci, we_ci, words=40.0):
    test = dict(base=dict(perplexity=40.0, ci_low=38.0, ci_high=42.0),
                finetuned=dict(perplexity=30.0, ci_low=28.0, ci_high=32.0))
    gen = dict(finetuned=dict(mean_words=words, stop_rate=0.9, loop_rate=0.0,
                              anachronism_rate=0.0),
               reference=dict(mean_words=44.0))
    style = dict(real=dict(balanced=0.8), paired=dict(
        era=dict(a=0.7, b=0.6, difference=0.1, ci_low=era_ci[0], ci_high=era_ci[1]),
        we=dict(a=0.3, b=0.2, real=0.45, gap=0.05, ci_low=we_ci[0],
                ci_high=we_ci[1])))
    mem = dict(k=5, base=dict(real=dict(share_prefix_k=0.3),
                              control=dict(share_prefix_k=0.0)))
    return dict(test=test, generation=gen, style=style, memorization=mem)


def test_conclusion_verdicts_follow_the_intervals():
    m = dict(n_train=1023, epochs=3)
    text = A.conclusion(_res((0.02, 0.2), (0.05, 0.3)), m, None, None)
    assert "**Voice: reached.**" in text and "**Era: reached.**" in text
    assert "**Form (length within a fifth of the real): reached.**" in text
    assert "**Prediction: reached.**" in text and "No measure above falls short" in text
    assert "part of both perplexities is recall" in text
    res = _res((0.02, 0.2), (0.05, 0.3))
    res["test"]["base_instructed"] = dict(perplexity=35.0, ci_low=33.0, ci_high=37.0)
    text = A.conclusion(res, m, None, None)
    assert "**Prediction: reached.**" in text and "clear of that one too" in text
    res["test"]["base_instructed"] = dict(perplexity=31.0, ci_low=29.0, ci_high=33.0)
    text = A.conclusion(res, m, None, None)
    assert "**Prediction: not shown.**" in text and "task's form alone" in text
    res["test"]["base_instructed"] = dict(perplexity=20.0, ci_low=18.0, ci_high=22.0)
    text = A.conclusion(res, m, None, None)
    assert "**Prediction: not reached.**" in text and "not fine-tuning" in text
    text = A.conclusion(_res((-0.1, 0.2), (-0.3, -0.05), words=20.0), m, None, None)
    # Era: the interval holds zero; voice: it lies below zero.
    assert "**Voice: not reached.**" in text and "**Era: not shown.**" in text
    flipped = A.conclusion(_res((-0.3, -0.05), (-0.1, 0.2)), m, None, None)
    assert "**Voice: not shown.**" in flipped and "**Era: not reached.**" in flipped
    assert "**Form (length within a fifth of the real): not reached.**" in text
    assert "the era gain is within the noise" in text and "shorter than" in text
    # The share matches the real one (0.44 against 0.45) but the interval
    # holds zero: not reached by fine-tuning.
    res = _res((-0.1, 0.2), (-0.1, 0.1))
    res["style"]["paired"]["we"]["a"] = 0.44
    text = A.conclusion(res, m, None, None)
    assert "**Voice: not reached by fine-tuning.**" in text and "not shown to come from" in text


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
    # Other decodings: each one's wins and losses are named, and the choice
    # is kept only while every other decoding trails on two of three.
    rs["recipes"]["mine"]["decodings"]["e"] = dict(
        dec, era_balanced=0.75, we_share=0.2, mean_words=30.0)
    text = A.recipe_verdict(rs, cfg, decoding="d")
    assert "nearer the real text on era, but not on voice and length" in text
    assert "I keep d because every other decoding is behind it" in text
    rs["recipes"]["mine"]["decodings"]["e"] = dict(
        dec, era_balanced=0.75, we_share=0.44, mean_words=30.0)
    text = A.recipe_verdict(rs, cfg, decoding="d")
    assert "nearer the real text on era and voice, but not on length" in text
    assert "these numbers do not support d" in text and "I keep" not in text


def test_conclusion_reads_epoch_ends_only():
    """Evaluations within an epoch are not epochs: a run evaluated every
    half epoch is judged at its epoch ends."""
    m = dict(n_train=1023, epochs=3)
    evals = [dict(epoch=e, eval_loss=v) for e, v in
             ((0.5, 3.20), (1.0, 3.17), (1.5, 3.16), (2.0, 3.15), (2.5, 3.17),
              (3.0, 3.18))]
    rs = dict(recipes={"r": dict(val_loss_by_epoch=evals, best_val_loss=3.15)})
    text = A.conclusion(_res((0.02, 0.2), (0.05, 0.3)), m, rs, None)
    assert ("lowest before the last epoch with \u201cr\u201d (epoch ends "
            "3.170, 3.150, 3.180: lowest after epoch 2 of 3, then up by 0.03)") in text
    evals[-1]["eval_loss"] = 3.10                    # still falling at epoch 3
    text = A.conclusion(_res((0.02, 0.2), (0.05, 0.3)), m, rs, None)
    assert "may help with \u201cr\u201d (epoch ends 3.170, 3.150, 3.100: lowest after epoch 3 of 3)" in text


def test_pct_diff_is_the_difference_of_the_printed_percentages():
    # 63.5% and 54.2% print as 64% and 54%: the sentence says +10, not +9.
    assert A.pct(0.6354) == "64%" and A.pct(0.5417) == "54%"
    assert A.pct_diff(0.6354, 0.5417) == "+10 points"
    assert A.pct_diff(0.2, 0.25) == "-5 points"


def test_drop_share_on_both_scales():
    # 38.99 -> 33.54 -> 24.39: 37% of the perplexity fall, 32% in nats.
    text = A.drop_share(38.99, 33.54, 24.39)
    assert text == ("37% of the fall in perplexity "
                    "(32% of the fall in mean loss)")
    assert A.drop_share(40.0, 20.0, 10.0).startswith("67% of the fall in perplexity (50%")
