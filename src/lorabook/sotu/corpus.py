"""The State of the Union corpus as a `lorabook.corpus.Corpus`: its
load-time cleaning rules, the instruction that names the president and the
year, the worked example nearest in year, and the year/president prompts
with no address (`prompts.NEW_PROMPTS`)."""
from __future__ import annotations

from lorabook.corpus import Corpus
from lorabook.sotu.cleaning import USER_RULES
from lorabook.sotu.prompts import NEW_PROMPTS, is_sotu, new_prompt_text, parse_sotu_prompt


class SotuCorpus(Corpus):
    name = "sotu"
    # The rules of the build script that are safe to run again on the
    # shipped passages (no salutations, headings or tables are left).
    load_rules = USER_RULES

    def matches(self, samples: list[dict]) -> bool:
        return is_sotu(samples)

    def instruction(self, prompt: str) -> str:
        p = parse_sotu_prompt(prompt)
        if not p:
            return super().instruction(prompt)
        return (f"Here is the opening of a passage from the State of the "
                f"Union address of {p['president']} in {p['year']}. "
                f"Continue the passage with the next one or two sentences "
                f"of the speech. Reply with those sentences only.\n\n"
                f"{p['opening']}")

    def example_for(self, prompt: str, train: list[dict]) -> dict:
        """The training passage closest in year to the prompt (the first
        such in the split's order)."""
        p = parse_sotu_prompt(prompt)
        if p and all("year" in s for s in train):
            return min(train, key=lambda s: abs(s["year"] - p["year"]))
        return super().example_for(prompt, train)

    def new_prompts(self, splits, all_samples, k, overlap_index):
        """`NEW_PROMPTS`, each flagged with whether its (year, president)
        pair has an address in the data and how many words its opening
        shares with any passage."""
        pairs = {(s["year"], s.get("president")) for s in all_samples}
        years = {s["year"] for s in all_samples}
        index = overlap_index([s["prompt"].split("\n", 1)[-1] + " " + s["response"]
                               for s in all_samples])
        return [dict(id=f"new-{j}", prompt=new_prompt_text(p), year=p["year"],
                     reference=None, kind="SOTU year/president with no address",
                     pair_in_data=(p["year"], p["president"]) in pairs,
                     year_in_data=p["year"] in years,
                     opening_overlap=index.longest(p["opening"]))
                for j, p in enumerate(NEW_PROMPTS)]


SOTU = SotuCorpus()
