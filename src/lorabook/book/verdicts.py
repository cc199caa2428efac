"""Sentences that follow the numbers: the recipe sweep's verdict (chapter 3)
and the conclusion (chapter 5)."""
from __future__ import annotations

from lorabook.book.assessment import fmt, pct, pct_diff


# --- chapter 3: the recipe sweep -------------------------------------------

def paired_verdict(diff: float, ci: list, better: str, worse: str,
                   unclear: str) -> str:
    """`better` when a paired interval lies above zero, `worse` when below,
    `unclear` when it holds zero."""
    if ci[0] > 0:
        return better
    if ci[1] < 0:
        return worse
    return unclear


def nearer_on(o: dict, d: dict) -> list[str]:
    """The measures on which decoding `o` of the recipe sweep beats `d`:
    "era" (higher balanced accuracy), "voice" and "length" (nearer the
    real text's we-share and mean length)."""
    def gap(v, k):
        return abs(v[k] - v["real_" + k])
    return [what for what, yes in (
        ("era", o["era_balanced"] > d["era_balanced"]),
        ("voice", gap(o, "we_share") < gap(d, "we_share")),
        ("length", gap(o, "mean_words") < gap(d, "mean_words"))) if yes]


# Validation losses of the recipe sweep (one seed per recipe) closer than
# this do not rank two recipes.
LOSS_TIE = 0.02


def _recipe_matches(fields: dict, cfg) -> bool:
    for k, v in fields.items():
        mine = getattr(cfg, k)
        if isinstance(v, list):
            v = tuple(v)
        if mine != v:
            return False
    return True


def recipe_verdict(rs: dict, cfg, decoding: str | None = None) -> str:
    """What the recipe sweep (benchmarks/recipe_sweep.json) says of the
    build's recipe and decoding, in sentences that follow the numbers."""
    from lorabook.generation import DECODING_NAME
    decoding = decoding or DECODING_NAME
    recipes = rs["recipes"]
    chosen = next((n for n, r in recipes.items()
                   if _recipe_matches(r["fields"], cfg)), None)
    if chosen is None:
        return ("The recipe of this build is not among those of the sweep, "
                "so the table does not describe it.")
    r = recipes[chosen]
    lowest = min(recipes, key=lambda n: recipes[n]["best_val_loss"])
    out = [f"I train with the recipe \u201c{chosen}\u201d and decode with "
           f"{decoding}."]
    if lowest == chosen:
        gaps = [v["best_val_loss"] - r["best_val_loss"]
                for n, v in recipes.items() if n != chosen]
        out.append(f"Its validation loss, {fmt(r['best_val_loss'], 4)}, is "
                   + ("the lower of the two recipes tried" if len(recipes) == 2
                      else f"the lowest of the {len(recipes)} recipes tried")
                   + (f", by {min(gaps):.3f} (one seed per recipe, so a "
                      "margin this small does not rank them)"
                      if gaps and min(gaps) < LOSS_TIE else "") + ".")
    else:
        out.append(f"Its validation loss, {fmt(r['best_val_loss'], 4)}, is "
                   f"{fmt(r['best_val_loss'] - recipes[lowest]['best_val_loss'], 2)}"
                   f" above the lowest (\u201c{lowest}\u201d).")
    d = r["decodings"].get(decoding)
    if d is None:
        return " ".join(out)
    close = [n for n, v in recipes.items() if n != chosen
             and abs(v["best_val_loss"] - r["best_val_loss"]) < LOSS_TIE
             and decoding in v["decodings"]]
    for n in close:
        o = recipes[n]["decodings"][decoding]
        ahead = nearer_on(d, o)
        out.append(
            f"Against “{n}”, with {decoding}, its generations are "
            + (f"nearer the real text on "
               f"{'all three measures' if len(ahead) == 3 else ' and '.join(ahead)}"
               f" ({pct(d['era_balanced'])} against {pct(o['era_balanced'])} "
               f"on the era, {pct(d['we_share'])} against {pct(o['we_share'])} "
               f"in the first person plural, {fmt(d['mean_words'])} against "
               f"{fmt(o['mean_words'])} words; real: "
               f"{pct(d['real_we_share'])}, {fmt(d['real_mean_words'])} words)"
               + (", so the generations favour it too." if len(ahead) >= 2 else
                  ", but not on the other two measures, so the choice "
                  "between them is close to a toss-up.")
               if ahead else "nowhere nearer the real text, so I kept it "
               "for its loss alone, a margin that does not rank them."))
    out.append(paired_verdict(
        d["era_diff"], d["era_ci"],
        f"On the era judge it beats the instructed base model "
        f"({pct(d['era_balanced'])} against {pct(d['base_era_balanced'])} "
        f"balanced accuracy; the interval of the gain, "
        f"{100 * d['era_ci'][0]:+.0f} to {100 * d['era_ci'][1]:+.0f} points, "
        "lies above zero).",
        f"On the era judge it does worse than the instructed base model "
        f"({pct(d['era_balanced'])} against {pct(d['base_era_balanced'])}; "
        "the interval lies below zero).",
        f"On the era judge it cannot be told from the instructed base model "
        f"({pct(d['era_balanced'])} against {pct(d['base_era_balanced'])}; "
        f"the interval, {100 * d['era_ci'][0]:+.0f} to "
        f"{100 * d['era_ci'][1]:+.0f} points, holds zero)."))
    out.append(paired_verdict(
        d["we_gap"], d["we_ci"],
        f"Its share of texts in the first person plural, "
        f"{pct(d['we_share'])}, is closer to the real "
        f"{pct(d['real_we_share'])} than the base model's "
        f"{pct(d['base_we_share'])} (interval above zero).",
        f"Its share of texts in the first person plural, "
        f"{pct(d['we_share'])}, is further from the real "
        f"{pct(d['real_we_share'])} than the base model's "
        f"{pct(d['base_we_share'])} (interval below zero).",
        f"Its share of texts in the first person plural, "
        f"{pct(d['we_share'])}, is not reliably closer to the real "
        f"{pct(d['real_we_share'])} than the base model's "
        f"{pct(d['base_we_share'])} (the interval holds zero)."))
    others = {k: v for k, v in r["decodings"].items() if k != decoding}
    ahead_of_all, scores, verdicts = True, [], []
    for name, o in others.items():
        better = nearer_on(o, d)
        worse = [m for m in ("era", "voice", "length") if m not in better]
        ahead_of_all &= len(worse) >= 2
        scores.append(f"with {name}, {pct(o['era_balanced'])} on the era, "
                      f"{pct(o['we_share'])} of texts in the first person "
                      f"plural and {fmt(o['mean_words'])} words")
        verdicts.append(
            f"nowhere nearer the real text than {decoding}" if not better
            else f"nearer the real text than {decoding} on all three "
            "measures" if not worse else
            f"nearer the real text on {' and '.join(better)}, but not on "
            f"{' and '.join(worse)}")
    if others:
        out.append(
            "Decoded otherwise, the same adapter scores " + "; ".join(scores)
            + f" (with {decoding}: {fmt(d['mean_words'])} words; real: "
            f"{fmt(d['real_mean_words'])}). "
            + (("Each is " if len(others) > 1 else "It is ") + verdicts[0] + "."
               if len(set(verdicts)) == 1 else
               " ".join(f"With {n}, it is {v}." for n, v in zip(others, verdicts))))
    if others:
        out.append(
            f"I keep {decoding} because every other decoding is behind it on "
            "at least two of the three measures (era, voice, length)."
            if ahead_of_all else
            "Another decoding is nearer the real text on at least two of "
            f"the three measures, so these numbers do not support {decoding}.")
    return " ".join(out)


# --- chapter 5: the conclusion ---------------------------------------------

def _goal(title: str, reached: bool | str | None, text: str) -> str:
    mark = {True: "reached", False: "not reached", None: "not judged",
            "base": "not reached by fine-tuning",
            "unshown": "not shown"}[reached]
    return f"- **{title}: {mark}.** {text}"

# A share within this many points of the real one "matches" it.
SHARE_MATCH = 0.05


def conclusion(res: dict, metrics: dict, rs: dict | None,
               small: dict | None, corpus=None,
               whole_train: int | None = None) -> str:
    """The introduction's goals answered with this build's numbers, what went
    wrong and what would help, as Markdown. Every verdict is computed.
    `corpus` (default: the State of the Union) names the samples; voice and
    era are goals only where the evaluation judged them. `whole_train`: the
    size of the whole training split (None: larger than what was trained on)."""
    from lorabook.sotu.corpus import SOTU
    corpus = corpus or SOTU
    w = corpus.samples_word
    t, G, st = res["test"], res["generation"], res.get("style")
    F, R = G["finetuned"], G["reference"]
    judged = bool(st and "paired" in st)
    lines = [(f"The introduction set two goals for the fine-tuned model: to "
              f"predict real, held-out {w} better than the base model, and to "
              f"write {w} of the real ones' length. Each is answered here "
              "with this build's numbers. The first counts as reached when "
              "the fine-tuned model's 95% interval is clear of the base "
              "model's, bare and told the task; \u201cnot shown\u201d means "
              "the intervals overlap:") if not judged else
             "The introduction set three goals for the fine-tuned model: to "
             "predict real, held-out addresses better than the base model; "
             "to continue a passage in the voice of the address, a "
             "president speaking to Congress; and to write in the language "
             "of the year it is given. Each is answered here with this "
             "build's numbers, with a fourth line on the passages' form. A "
             "goal counts as reached when the fine-tuned model's 95% "
             "interval is clear of the base model's, bare and told the task (prediction) or when "
             "the paired 95% interval of its gain over the instructed base "
             "model lies above zero (voice, era); \u201cnot shown\u201d "
             "means the interval holds zero, and \u201cnot reached by "
             "fine-tuning\u201d that the fine-tuned model is near the real text "
             f"(for the voice: its share of \u201cwe\u201d within "
             f"{100 * SHARE_MATCH:.0f} points of the real share) but the "
             "instructed base model is as near:", ""]
    b, f = t["base"], t["finetuned"]
    told = t.get("base_instructed")
    apart = f["ci_high"] < b["ci_low"]
    told_apart = told is None or f["ci_high"] < told["ci_low"]
    mem = res.get("memorization")
    recall = ""
    if mem:
        br, bc = mem["base"]["real"], mem["base"]["control"]
        recall = (f" Given the opening of a real passage, the base model "
                  f"went on with its next {mem['k']} words or more for "
                  f"{pct(br['share_prefix_k'])} of the passages, and for "
                  f"{pct(bc['share_prefix_k'])} of the control passages, "
                  + ("so part of both perplexities is recall of text it has "
                     "seen." if br["share_prefix_k"] > bc["share_prefix_k"] + 0.05
                     else "so this test finds no sign that recall of the "
                     "addresses' exact words lowers either perplexity."))
    # Against the instructed base: clear of it, overlapping it, or above it.
    told_overlaps = not told_apart and f["ci_low"] <= told["ci_high"]
    told_text = "" if told is None else (
        f" Told the task with an instruction and a worked example, the base "
        f"model reaches {fmt(told['perplexity'], 4)}; "
        + ("the fine-tuned model's interval is clear of that one too."
           if told_apart else "the fine-tuned model's interval overlaps "
           "that one, so the drop may be the task's form alone."
           if told_overlaps else "that is lower than the fine-tuned "
           "model's, so the drop is the task's form, not fine-tuning."))
    if not apart:
        predicted = False
    elif told_apart:
        predicted = True
    else:
        predicted = "unshown" if told_overlaps else False
    lines.append(_goal(
        "Prediction", predicted,
        f"Test perplexity fell from {fmt(b['perplexity'], 4)} (base model, "
        f"bare prompt) to {fmt(f['perplexity'], 4)}; the 95% intervals "
        + ("do not overlap." if apart else "overlap.") + told_text + recall))
    if st and "paired" in st:
        pw, pe = st["paired"]["we"], st["paired"]["era"]
        matches = abs(pw["a"] - pw["real"]) <= SHARE_MATCH
        interval = (f"paired 95% interval of the fine-tuned model's gain in "
                    f"closeness, {100 * pw['ci_low']:+.0f} to "
                    f"{100 * pw['ci_high']:+.0f} points")
        lines.append(_goal(
            "Voice", True if pw["ci_low"] > 0 else "base" if matches else
            "unshown" if pw["ci_high"] >= 0 else False,
            f"{pct(pw['a'])} of the fine-tuned continuations speak as "
            f"\u201cwe\u201d, \u201cour\u201d or \u201cus\u201d, against {pct(pw['real'])} of "
            f"the real ones and {pct(pw['b'])} of the instructed base "
            "model's. "
            + (f"Fine-tuning brought the share closer to the real one "
               f"({interval})." if pw["ci_low"] > 0 else
               f"The share is within {100 * SHARE_MATCH:.0f} points of the real one, "
               f"but the instructed base "
               f"model's is as close, so this is not shown to come from "
               f"fine-tuning ({interval})." if matches else
               f"The share is not reliably closer to the real one than the "
               f"instructed base model's ({interval}).")
            + " The first person is only the surface of the voice; my "
            "readings above judge the rest."))
        lines.append(_goal(
            "Era", paired_verdict(pe["difference"], [pe["ci_low"], pe["ci_high"]],
                                  True, False, "unshown"),
            f"The era judge places {pct(pe['a'])} of the fine-tuned "
            f"continuations in their era (balanced accuracy) against "
            f"{pct(pe['b'])} for the instructed base model, a difference of "
            f"{pct_diff(pe['a'], pe['b'])} (paired 95% interval "
            f"{100 * pe['ci_low']:+.0f} to {100 * pe['ci_high']:+.0f}"
            + paired_verdict(pe["difference"], [pe["ci_low"], pe["ci_high"]],
                             "; it lies above zero", "; it lies below zero",
                             "; it holds zero, so the gain is not shown")
            + f"). On the real continuations the judge manages "
            f"{pct(st['real']['balanced'])}: a generation can reach that "
            "only by reading as much like its era as the real text does."))
    near = abs(F["mean_words"] - R["mean_words"]) <= 0.2 * R["mean_words"]
    lines.append(_goal(
        "Form (length within a fifth of the real)", near,
        f"The fine-tuned model's texts average {fmt(F['mean_words'])} words "
        f"against {fmt(R['mean_words'])} for the real ones, and end by "
        f"themselves in {pct(F['stop_rate'])} of cases."))
    short = [name for name, bad in (
        ("the era gain is within the noise of the scored prompts",
         bool(st and "paired" in st and st["paired"]["era"]["ci_low"] <= 0)),
        ("the voice measure does not separate the fine-tuned model from "
         "the instructed base model",
         bool(st and "paired" in st and st["paired"]["we"]["ci_low"] <= 0)),
        (f"the fine-tuned model's texts are "
         f"{'shorter' if F['mean_words'] < R['mean_words'] else 'longer'}"
         " than the real ones", not near)) if bad]
    lines += ["", "**What went wrong.** "
              + (("By the numbers: " + "; ".join(short) + ". ") if short else
                 "No measure above falls short of its goal. ")
              + "My readings of the shown generations (the human assessment "
              "above) judge what the measures cannot: whether a generation "
              "makes sense, stays on its subject and states true "
              "facts. Whatever a generation states as fact is the model's "
              "guess, to be checked against the real text.",
              ""]
    helps = []
    if rs:
        recs = rs["recipes"]
        qv = [r for n, r in recs.items() if n.startswith("q,v")]
        al = [r for n, r in recs.items() if n.startswith("all linear")]
        if qv and al:
            q_best = min(r["best_val_loss"] for r in qv)
            a_best = min(r["best_val_loss"] for r in al)
            helps.append(
                f"adapting every linear layer instead of the query and value "
                f"maps alone lowered the validation loss from {fmt(q_best, 4)} "
                f"to {fmt(a_best, 4)} in the recipe sweep of chapter 3"
                if a_best < q_best else
                f"in the recipe sweep of chapter 3, adapting every linear "
                f"layer did not beat the query and value maps alone "
                f"({fmt(a_best, 4)} against {fmt(q_best, 4)})")
    if rs:
        falling, rising = [], []
        for name, r in rs["recipes"].items():
            # Epoch ends only (a run may also evaluate within an epoch).
            ev = [e for e in r.get("val_loss_by_epoch") or []
                  if float(e.get("epoch", 0)).is_integer()]
            if len(ev) > 1:
                k = min(range(len(ev)), key=lambda i: ev[i]["eval_loss"])
                ends = ", ".join(f"{e['eval_loss']:.3f}" for e in ev)
                where = (f"\u201c{name}\u201d (epoch ends {ends}: lowest "
                         f"after epoch {int(ev[k]['epoch'])} of "
                         f"{int(ev[-1]['epoch'])}")
                if k < len(ev) - 1:
                    rising.append(where + ", then up by "
                                  f"{ev[-1]['eval_loss'] - ev[k]['eval_loss']:.2f})")
                else:
                    falling.append(where + ")")
        if rising:
            helps.append(
                "more epochs show no sign of helping at the rates tried: "
                "the validation loss at the epoch ends was lowest before "
                "the last epoch with " + " and ".join(rising)
                + " (epochs within one run, whose learning rate decays to "
                "zero; I trained no run longer than three epochs)")
        if falling:
            helps.append(
                "more epochs may help with " + " and ".join(falling)
                + ", whose validation loss was still falling at the end")
    if small and small.get("n_train") and small["n_train"] < metrics["n_train"]:
        ours = t["finetuned"]["perplexity"]
        helps.append(
            f"more {w}: the same kind of run on {small['n_train']} "
            f"{w} scored a test perplexity of "
            f"{fmt(small['test_perplexity'], 4)}, against {fmt(ours, 4)} "
            f"on {metrics['n_train']:,}"
            + ("" if ours < small["test_perplexity"] else
               " (no gain from more data here)"))
    lines.append(
        "**What would improve it.** "
        + ("Measured here: " + "; ".join(helps) + ". " if helps else "")
        + (f"I trained on {metrics['n_train']:,} of the training "
           f"split's {w} for {metrics['epochs']} epochs; training on all "
           f"of them and scoring every validation and test {corpus.sample_word} "
           "is the next step, meant for a GPU (a setting of my configuration "
           "that I did not run here). "
           if whole_train is None or metrics["n_train"] < whole_train else
           f"I trained on the whole training split ({metrics['n_train']:,} {w}) "
           f"for {metrics['epochs']} epochs; more data of this kind is the "
           "surest next step. ")
        + ("A larger model and a prompt that names the occasion (an annual "
           "message to Congress) are the next levers, untried here."
           if judged else "A larger model is the next lever, untried here."))
    return "\n".join(lines)
