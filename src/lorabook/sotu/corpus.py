"""The State of the Union corpus as a `lorabook.corpus.Corpus`: its
load-time cleaning rules, the instruction that names the president and the
year, the worked example nearest in year, and the year/president prompts
with no address (`prompts.NEW_PROMPTS`)."""
from __future__ import annotations

from lorabook.corpus import Corpus
from lorabook.sotu.cleaning import USER_RULES
from lorabook.sotu.control import CONTROL
from lorabook.sotu.prompts import NEW_PROMPTS, is_sotu, new_prompt_text, parse_sotu_prompt


class SotuCorpus(Corpus):
    name = "sotu"
    # The rules of the build script that are safe to run again on the
    # shipped passages (no salutations, headings or tables are left).
    load_rules = USER_RULES
    # The book's sections that need what only this corpus has: its
    # passage cutter, build-time cleaning and years (chapters 1 and 2), the
    # recipe sweep (chapter 3), the era judge and the contamination check's
    # control texts (chapter 5).
    features = frozenset({"passages", "recipe_sweep", "era", "contamination"})
    control = CONTROL
    sample_word, samples_word = "passage", "passages"
    group_word, groups_word = "address", "addresses"

    reading_criteria = {
        "coherent": "Does it make sense, sentence by sentence and as a whole?",
        "on_topic": "Does it continue the prompt's subject?",
        "own_voice": "Does it speak as the president to Congress (I, we, our), "
                     "not about him or about the task?",
        "of_its_era": "Do its words and concerns belong to the prompt's year?",
        "anachronisms": "Anything that could not have been said in that year?",
        "invented_facts": "Names, numbers or events that are wrong or made up?",
        "repetition": "Does it repeat itself or loop?",
    }
    reading_qualities = ("coherent", "on_topic", "own_voice", "of_its_era")

    def matches(self, samples: list[dict]) -> bool:
        return is_sotu(samples)

    def task(self, name: str, text_only: bool) -> str:
        return ("**The task.** Given the year, the president, the party and the "
                "opening sentence of a passage from a State of the Union address, "
                "continue the passage in the voice of that address. The data are "
                "the annual messages and addresses from George Washington's in 1790 "
                "to Joseph Biden's in 2021 ({ref}`ch-dataset`). An "
                "instruction-tuned small model writes generic assistant prose. I "
                "set the fine-tuned model three goals, which the conclusion of "
                "chapter 5 answers: to predict real, held-out addresses better than "
                "the base model; to continue a passage in the voice of the address, "
                "a president speaking to Congress; and to write in the language of "
                "the year it is given, like a nineteenth-century message to "
                "Congress when asked for 1830 and like a televised speech when "
                "asked for 1990. As a check of form I also ask that its passages be "
                "about as long as the real ones (within a fifth).")

    def sample_description(self, samples: list[dict]) -> str:
        return ("A passage is a run of consecutive sentences of one address. "
                "The **prompt** names the year, the president and the party "
                "and quotes the passage's opening sentence; the **response** "
                "is the rest of the passage, the text the model must learn "
                "to write.")

    def instruction(self, prompt: str) -> str:
        p = parse_sotu_prompt(prompt)
        if not p:
            return super().instruction(prompt)
        return (f"Here is the opening of a passage from the State of the "
                f"Union address of {p['president']} in {p['year']}. "
                f"Continue the passage with the next one or two sentences "
                f"of the speech. Reply with those sentences only.\n\n"
                f"{p['opening']}")

    example_rule = "the training passage closest in year to the prompt"

    def example_for(self, prompt: str, train: list[dict]) -> dict:
        """The training passage closest in year to the prompt (the first
        such in the split's order)."""
        p = parse_sotu_prompt(prompt)
        if p and all("year" in s for s in train):
            return min(train, key=lambda s: abs(s["year"] - p["year"]))
        return super().example_for(prompt, train)

    def new_prompts_rule(self, text_only: bool) -> str:
        return ("a year and president with no address in the corpus (two "
                "presidents who died before giving one, the one year without "
                "an address, and a year after the corpus ends), with opening "
                "sentences I wrote. The table checks that they are new: the "
                "year/president pair is in no address, and the longest run of "
                "words each opening shares with any passage is short")

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
