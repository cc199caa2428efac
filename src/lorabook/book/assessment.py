"""The written assessment of chapter 5, from the numbers of the build.

Every sentence here is chosen by the numbers it states: a comparison word
("lower", "closer", "more often") is computed from the two values beside
it, and a claim that the numbers do not support is not made. Quotes come
from the generations the chapter shows, picked by a rule named in the
text (`pick_quotes`). A test renders the assessment from numbers that
point each way and checks that the words follow (tests/test_assessment.py).
"""
from __future__ import annotations

import math

from lorabook import metrics as X

# A generation "loops" when more than a fifth of its 3-grams repeat an
# earlier one; real passages score about 0 (chapter 5 prints their rate).
LOOP_THRESHOLD = 0.2
# An echo is a run of at least this many words copied from the prompt.
ECHO_WORDS = 6
# The era judge is used only if, on real passages, it beats both floors by
# this much (accuracy over always-the-commonest-era, balanced accuracy over
# chance).
JUDGE_MARGIN = 0.15


def fmt(x, digits: int = 3) -> str:
    """A number with at most `digits` significant digits, for prose."""
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return f"{x:,}"
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "infinite"
    mag = int(math.floor(math.log10(abs(x))))
    decimals = max(0, digits - 1 - mag)
    return f"{round(x, decimals):,.{decimals}f}"


def pct(x: float) -> str:
    """A share as a whole percentage: 0.4375 -> "44%"."""
    return f"{100 * x:.0f}%"


def compare(a: float, b: float, lower: str, higher: str, same: str,
            tol: float = 0.0) -> str:
    """`lower` if a < b, `higher` if a > b, `same` within `tol`."""
    if abs(a - b) <= tol:
        return same
    return lower if a < b else higher


def judge_usable(judge: dict) -> bool:
    """The era judge beats both floors on real passages by JUDGE_MARGIN."""
    return (judge["real_accuracy"] - judge["majority"] >= JUDGE_MARGIN
            and judge["real_balanced"] - judge["chance"] >= JUDGE_MARGIN)


def words_n(n: int) -> str:
    return f"{n} word" if n == 1 else f"{n} words"


def excerpt(text: str, n_words: int = 30) -> str:
    """The first `n_words` words of a text, "…" if cut."""
    ws = (text or "").split()
    return " ".join(ws[:n_words]) + (" …" if len(ws) > n_words else "")


def pick_quotes(shown: list[dict]) -> dict:
    """Quotes from the shown generations, each by a stated rule.

    `shown` rows have keys prompt, reference (None for new prompts), year,
    and per system (base, base_instructed, finetuned) the generated text.
    Rules: `best` is the fine-tuned generation of a test prompt with the
    highest ROUGE-L against its real continuation, `worst` the one with
    the lowest (when they differ); `loop` the generation
    of any system with the highest repeated-3-gram rate, if above
    LOOP_THRESHOLD; `echo` the first fine-tuned generation that repeats
    ECHO_WORDS or more words of its prompt; `anachronism` the first
    fine-tuned generation that uses a term before its time (`metrics.
    anachronisms`).
    """
    quotes: dict = {}
    tests = [r for r in shown if r.get("reference")]
    if tests:
        scores = X.rouge_l_scores([r["finetuned"] for r in tests],
                                  [r["reference"] for r in tests])
        j = max(range(len(tests)), key=lambda i: scores[i])
        quotes["best"] = dict(row=tests[j], system="finetuned",
                              value=scores[j])
        k = min(range(len(tests)), key=lambda i: scores[i])
        if k != j:
            quotes["worst"] = dict(row=tests[k], system="finetuned",
                                   value=scores[k])
    worst = None
    for r in shown:
        for system in ("finetuned", "base_instructed", "base"):
            if system not in r:
                continue
            rate = X.repeated_ngram_rate(r[system], 3)
            if rate > LOOP_THRESHOLD and (worst is None or rate > worst["value"]):
                worst = dict(row=r, system=system, value=rate)
    if worst:
        quotes["loop"] = worst
    for r in shown:
        opening = (r["prompt"] or "").split("\n", 1)[-1]
        n = X.echo_length(r["finetuned"], opening)
        if n >= ECHO_WORDS:
            quotes["echo"] = dict(row=r, system="finetuned", value=n)
            break
    for r in shown:
        terms = X.anachronisms(r["finetuned"], r.get("year"))
        if terms:
            quotes["anachronism"] = dict(row=r, system="finetuned",
                                         value=terms)
            break
    return quotes


SYSTEM_NAMES = dict(base="the bare base model",
                    base_instructed="the instructed base model",
                    finetuned="the fine-tuned model")


def _head(row) -> str:
    return (row["prompt"] or "(empty prompt)").split("\n", 1)[0].rstrip(":")


def write(f: dict) -> list[str]:
    """The assessment as Markdown paragraphs, one per question.

    `f` holds: ppl (base, finetuned, base_ci, finetuned_ci, p_better);
    systems (base, base_instructed, finetuned -> metric dicts with rouge_l,
    bleu, mean_words, stop_rate, loop_rate, echo_rate, we_rate,
    anachronism_rate, era_balanced); reference (mean_words, we_rate);
    judge (real_accuracy, real_balanced, majority, chance) or None;
    n (generations per system); overlap (max_overlap, copies) of the
    fine-tuned model; quotes (from `pick_quotes`); decoding (a short
    description of the settings).
    """
    S, R, out = f["systems"], f["reference"], []
    B, I, F = S["base"], S["base_instructed"], S["finetuned"]
    n = f["n"]

    # Perplexity: the one measure that needs no generation.
    p = f["ppl"]
    word = compare(p["finetuned"], p["base"], "lower", "higher", "the same")
    overlap = not (p["finetuned_ci"][1] < p["base_ci"][0]
                   or p["base_ci"][1] < p["finetuned_ci"][0])
    out.append(
        f"**Prediction.** The fine-tuned model's test perplexity, "
        f"{fmt(p['finetuned'])}, is {word} than the base model's "
        f"({fmt(p['base'])}); the two 95% intervals "
        f"{'overlap' if overlap else 'do not overlap'}, and the fine-tuned "
        f"model is the better one in {pct(p['p_better'])} of the paired "
        f"resamples. "
        + ("Fine-tuning made the real addresses more predictable."
           if p["finetuned"] < p["base"] and not overlap else
           "Fine-tuning did not clearly change how predictable the real "
           "addresses are." if overlap else
           "Fine-tuning made the real addresses less predictable."))

    # Register: length, stopping, first person plural.
    gap_f = abs(F["mean_words"] - R["mean_words"])
    gap_i = abs(I["mean_words"] - R["mean_words"])
    nearer = ("closer to" if gap_f < gap_i - 0.5 else "further from"
              if gap_f > gap_i + 0.5 else "as close to")
    out.append(
        f"**Form.** Under {f['decoding']}, the fine-tuned passages average "
        f"{fmt(F['mean_words'])} words, "
        f"{compare(F['mean_words'], R['mean_words'], 'shorter than', 'longer than', 'as long as', 0.5)} "
        f"the real ones ({fmt(R['mean_words'])}) and "
        f"{nearer} their length "
        f"{'as' if nearer == 'as close to' else 'than'} the "
        f"instructed base model's ({fmt(I['mean_words'])}). The fine-tuned "
        f"model ends {pct(F['stop_rate'])} of its passages by itself, "
        f"{compare(F['stop_rate'], I['stop_rate'], 'less often than', 'more often than', 'as often as')} "
        f"the instructed base model ({pct(I['stop_rate'])}); a passage that "
        f"does not end was cut at the token limit. "
        f"{pct(F['we_rate'])} of the fine-tuned passages speak as \"we\" or "
        f"\"our\", against {pct(R['we_rate'])} of the real ones and "
        f"{pct(I['we_rate'])} of the instructed base model's"
        + ("; by this measure fine-tuning moved the voice away from the "
           "addresses' first person plural, not towards it."
           if abs(F["we_rate"] - R["we_rate"]) > abs(I["we_rate"] - R["we_rate"]) + 0.02
           else "; by this measure the fine-tuned voice is closer to the "
           "addresses' first person plural."
           if abs(F["we_rate"] - R["we_rate"]) < abs(I["we_rate"] - R["we_rate"]) - 0.02
           else "."))

    # Era.
    J = f.get("judge")
    if J is None:
        out.append("**Era.** The data carry no year, so no era is judged.")
    elif not judge_usable(J):
        out.append(
            f"**Era.** The era judge is not used: on the real continuations "
            f"its accuracy is {pct(J['real_accuracy'])} against "
            f"{pct(J['majority'])} for always naming the commonest era, and "
            f"its balanced accuracy {pct(J['real_balanced'])} against "
            f"{pct(J['chance'])} by chance, less than "
            f"{100 * JUDGE_MARGIN:.0f} points above a floor, so it cannot tell "
            f"whether a generation sounds like its era.")
    else:
        fb, ib, bb = F["era_balanced"], I["era_balanced"], B["era_balanced"]
        verdict = ("above chance" if fb - J["chance"] >= 0.1 else
                   "near chance" if abs(fb - J["chance"]) < 0.1 else
                   "below chance")
        out.append(
            f"**Era.** The era judge places the real continuations in their "
            f"era with balanced accuracy {pct(J['real_balanced'])} (chance: "
            f"{pct(J['chance'])}), so it can tell the eras apart. On the "
            f"generations it scores {pct(fb)} for the fine-tuned model, "
            f"{verdict}, "
            f"{compare(fb, ib, 'below', 'above', 'level with', 0.02)} the "
            f"instructed base model ({pct(ib)}) and "
            f"{compare(fb, bb, 'below', 'above', 'level with', 0.02)} the "
            f"bare one ({pct(bb)}). "
            + ("The fine-tuned model's vocabulary follows the year it is "
               "given." if fb - J["chance"] >= 0.1 and fb > ib else
               "Fine-tuning did not make the vocabulary follow the year "
               "better than the instructed base model's does." if fb <= ib else
               "The fine-tuned vocabulary follows the year only weakly."))

    # Repetition under the chosen decoding.
    loops = [(s, S[s]["loop_rate"]) for s in ("finetuned", "base_instructed", "base")]
    q = f["quotes"].get("loop")
    if all(rate == 0 for _, rate in loops):
        out.append(
            f"**Repetition.** No generation of any model loops (more than "
            f"{pct(LOOP_THRESHOLD)} of its 3-grams repeated)."
            + (" The decoding sees to most of that: it never repeats a "
               "3-gram of tokens (3-grams of words can still recur, as the "
               "table shows), so a model that would loop is pushed to new "
               "words instead, which can read as drift rather than "
               "repetition." if "no_repeat_ngram_size" in f["decoding"] else
               ""))
    else:
        sent = (f"**Repetition.** Loops remain: "
                + ", ".join(f"{pct(rate)} of the generations of "
                            f"{SYSTEM_NAMES[s]}" for s, rate in loops)
                + f" repeat more than {pct(LOOP_THRESHOLD)} of their "
                  f"3-grams.")
        if q:
            sent += (f" The worst of the shown ones ({SYSTEM_NAMES[q['system']]}, "
                     f"{_head(q['row'])}, {pct(q['value'])} repeated): "
                     f"\"{excerpt(q['row'][q['system']], 30)}\"")
        out.append(sent)

    # Faithfulness: overlap with the real continuation, echoes, copying.
    rw = compare(F["rouge_l"], I["rouge_l"], "lower than", "higher than",
                 "the same as", 0.005)
    bw = compare(F["bleu"], I["bleu"], "lower than", "higher than",
                 "the same as", 0.05)
    sent = (f"**Content.** Against the real continuations, the fine-tuned "
            f"model's ROUGE-L ({fmt(F['rouge_l'])}) is {rw} the "
            f"instructed base model's ({fmt(I['rouge_l'])}) and its BLEU "
            f"({fmt(F['bleu'])}) {bw} the instructed base model's "
            f"({fmt(I['bleu'])}); both "
            f"are small "
            f"because a good continuation need not share words with the "
            f"one the president wrote. ")
    ov = f["overlap"]
    sent += (f"Its longest run of words shared with any training passage "
             f"is {words_n(ov['max_overlap'])}"
             + (f", and {ov['copies']} of its {n} generations copy 12 or "
                f"more words" if ov["copies"] else
                ", so it does not copy its training data") + ".")
    out.append(sent)

    e = f["quotes"].get("echo")
    sent = (f"**Echoes.** {pct(F['echo_rate'])} of the fine-tuned and "
            f"{pct(I['echo_rate'])} of the instructed base generations "
            f"repeat {ECHO_WORDS} or more words of their own prompt. ")
    if e:
        sent += (f"The first shown one ({_head(e['row'])}, "
                 f"{words_n(e['value'])}): "
                 f"\"{excerpt(e['row']['finetuned'], 25)}\"")
    else:
        sent += "None of the shown fine-tuned generations does."
    out.append(sent)

    a = f["quotes"].get("anachronism")
    sent = (f"**Facts.** A short list of terms with the year they came into "
            f"use flags {pct(F['anachronism_rate'])} of the fine-tuned and "
            f"{pct(I['anachronism_rate'])} of the instructed base "
            f"generations as using a term before its time"
            + (f" (real continuations: {pct(R['anachronism_rate'])})"
               if "anachronism_rate" in R else "") + ". ")
    if a:
        sent += (f"In the shown ones, {_head(a['row'])} mentions "
                 f"{', '.join(repr(t) for t in a['value'])}: "
                 f"\"{excerpt(a['row']['finetuned'], 25)}\" ")
    sent += ("Names, figures and events in every generation are the "
             "model's invention; none should be read as history.")
    out.append(sent)

    b = f["quotes"].get("best")
    if b and b["value"] == 0:
        out.append(
            "**Closest to the real text.** No shown fine-tuned generation "
            "shares a single word sequence with its real continuation "
            "(ROUGE-L 0 for each).")
    elif b:
        out.append(
            f"**Closest to the real text.** The shown fine-tuned generation "
            f"with the highest ROUGE-L ({fmt(b['value'])}, "
            f"{_head(b['row'])}): \"{excerpt(b['row']['finetuned'], 35)}\" "
            f"The president wrote: \"{excerpt(b['row']['reference'], 35)}\"")
    w = f["quotes"].get("worst")
    if w:
        out.append(
            f"**Furthest from the real text.** The shown fine-tuned "
            f"generation with the lowest ROUGE-L ({fmt(w['value'])}, "
            f"{_head(w['row'])}): \"{excerpt(w['row']['finetuned'], 35)}\" "
            f"The president wrote: \"{excerpt(w['row']['reference'], 35)}\" "
            "Low overlap need not mean a wrong subject: read it beside "
            "its prompt in the list above.")

    # What the instruction did for the base model.
    iw = compare(I["rouge_l"], B["rouge_l"], "lowers", "raises", "leaves")
    out.append(
        f"**The instruction.** Telling the base model the task {iw} its "
        f"ROUGE-L ({fmt(B['rouge_l'])} bare, {fmt(I['rouge_l'])} "
        + (f"instructed), and its loop rate goes from {pct(B['loop_rate'])} "
           f"to {pct(I['loop_rate'])}. "
           if pct(B["loop_rate"]) != pct(I["loop_rate"]) else
           f"instructed); neither loops more than the other "
           f"({pct(I['loop_rate'])}). ")
        + ("The instructed base model is the fairer baseline, and the one "
           "compared above." if I["rouge_l"] >= B["rouge_l"] else
           "The bare prompt served it better by this measure; the "
           "comparison above still uses the instructed one, which is told "
           "the task the fine-tuned model learned from examples."))
    return out


def facts_from(res: dict, shown: list[dict]) -> dict:
    """The inputs of `write` from `evaluate_run`'s result and the shown
    generations (`evaluate.load_generations`)."""
    t, G = res["test"], res["generation"]
    st = res.get("style")
    judge = None
    if st:
        judge = dict(real_accuracy=st["real"]["accuracy"],
                     real_balanced=st["real"]["balanced"],
                     majority=st["majority"], chance=st["chance"])
    from lorabook.generation import describe_decoding
    return dict(
        ppl=dict(base=t["base"]["perplexity"],
                 finetuned=t["finetuned"]["perplexity"],
                 base_ci=(t["base"]["ci_low"], t["base"]["ci_high"]),
                 finetuned_ci=(t["finetuned"]["ci_low"],
                               t["finetuned"]["ci_high"]),
                 p_better=t["p_finetuned_better"]),
        systems={k: dict(G[k], era_balanced=G[k].get("era_balanced", 0.0))
                 for k in ("base", "base_instructed", "finetuned")},
        reference=G["reference"], judge=judge, n=G["n_prompts"],
        overlap=dict(max_overlap=G["finetuned"]["max_overlap"],
                     copies=G["finetuned"]["copies"]),
        quotes=pick_quotes(shown),
        decoding=f"{G['settings']['name']} decoding "
                 f"({describe_decoding(G['settings']['decoding'])})")


# The verdicts of the recipe sweep (chapter 3) and the conclusion (chapter 5)
# live in book.verdicts; the chapters reach them through this module.
from lorabook.book.verdicts import (_recipe_matches, conclusion,  # noqa: E402,F401
                                    paired_verdict, recipe_verdict)
