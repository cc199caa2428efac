"""What a stage may know about the corpus it runs on, with generic defaults.

The stages (data, generation, evaluate) are written for any prompt/response
or text-only data. Where a corpus has more to offer (the State of the Union
addresses have years, presidents and a prompt form), it plugs in a
`Corpus` of its own (`lorabook.sotu.corpus.SOTU`); `data.corpus_for`
picks the one whose `matches` accepts the samples, else `GENERIC`.

A corpus offers:

- `load_rules`: the cleaning rules run on the text when it is loaded.
  The generic default removes only invisible control characters, so that
  a user's brackets, links, code and spacing come through unchanged;
- `instruction(prompt)`: what the instructed base model is told (a
  config's `instruction` replaces it: `with_instruction`);
- `example_for(prompt, train)`: its one worked example;
- `new_prompts(...)`: prompts new to the model, for chapter 5;
- `sample_description(samples)`: what one sample is, in a sentence or two
  of Markdown (chapter 1);
- `control`: texts no model can have seen, for the contamination check;
- `features`: the sections of the book only this corpus can support
  (`lorabook.book.toc` lists their notebooks in `_toc.yml`).
"""
from __future__ import annotations

import copy
from typing import Callable

# The cleaning rule names are those of lorabook.sotu.cleaning, whose
# `clean_text` runs them; "control_chars" is safe on any text.
GENERIC_LOAD_RULES = ("control_chars",)


class Corpus:
    """Any data: what every stage does when it knows nothing more."""

    name = "generic"
    load_rules: tuple[str, ...] = GENERIC_LOAD_RULES
    features: frozenset[str] = frozenset()
    # Texts in the manner of the data that no model can have seen, as
    # (opening, continuation) pairs: the contamination check's control.
    # None here, so the check is skipped.
    control: tuple[tuple[str, str], ...] = ()
    # What the book calls a sample and a group of samples.
    sample_word, samples_word = "sample", "samples"
    group_word, groups_word = "group", "groups"

    # What my reading of each shown generation answers (chapter 5): the
    # qualities yes, partly or no; the faults none, or what was found.
    reading_criteria = {
        "coherent": "Does it make sense, sentence by sentence and as a whole?",
        "on_topic": "Does it keep to its prompt's subject (to one subject "
                    "where there is no prompt)?",
        "own_voice": "Does it write as the data's own authors do, not about "
                     "the text or the task?",
        "invented_facts": "Names, numbers or events that are wrong or made up?",
        "repetition": "Does it repeat itself or loop?",
    }
    reading_qualities = ("coherent", "on_topic", "own_voice")

    def matches(self, samples: list[dict]) -> bool:
        return True

    def task(self, name: str, text_only: bool) -> str:
        """The introduction's statement of the task and of the goals that
        chapter 5's conclusion answers (MyST)."""
        what = (f"write a text like those of *{name}*" if text_only else
                f"write the response to a prompt of *{name}* as the data "
                "do")
        return (f"**The task.** To {what} ({{ref}}`ch-dataset`). An "
                "instruction-tuned small model writes generic assistant "
                "prose. I set the fine-tuned model two goals, which the "
                "conclusion of chapter 5 answers: to predict real, held-out "
                f"{self.samples_word} better than the base model, and to write "
                f"{self.samples_word} about as long as the real ones (within a "
                "fifth).")

    def sample_description(self, samples: list[dict]) -> str:
        """What a sample is, said from the data's shape alone."""
        if all(not s["prompt"] for s in samples):
            return ("Each sample is one text with no prompt: the model learns "
                    "to write texts like these from nothing, and every token "
                    "of a text is learned.")
        return ("Each sample is a **prompt** and a **response**: the "
                "response is the text the model must learn to write after "
                "the prompt, and only its tokens are learned.")

    def instruction(self, prompt: str) -> str:
        """The base model's fair chance: the same prompt, and the task said."""
        if not prompt:
            return ("Write one passage of the kind of text you were trained "
                    "on. Write only the text, no comment.")
        return ("Write the reply to the following, in the form it calls "
                f"for. Write only the reply, no comment.\n\n{prompt}")

    def with_instruction(self, template: str | None) -> "Corpus":
        """This corpus, telling the base model `template` instead (a
        config's `instruction`; None: unchanged). `{prompt}` in it marks
        where the prompt goes; without it the prompt follows after a blank
        line (an empty prompt adds nothing)."""
        if template is None:
            return self
        told = copy.copy(self)
        told.instruction = lambda prompt: fill_instruction(template, prompt)
        return told

    # How `example_for` picks the worked example, said in chapter 5.
    example_rule = "the first training sample"

    def example_for(self, prompt: str, train: list[dict]) -> dict:
        """The worked example shown before the task: the first training
        sample."""
        return train[0]

    def new_prompts_rule(self, text_only: bool) -> str:
        """How `new_prompts` chose them, said in chapter 5 (Markdown)."""
        if text_only:
            return ("empty prompts, so that the model writes from nothing, as "
                    "it learned to")
        return ("the test prompts least like any training prompt (by the "
                "longest run of words each shares with one, shortest first), "
                "with their real responses; the table gives that run for each")

    def new_prompts(self, splits: dict, all_samples: list[dict], k: int,
                    overlap_index: Callable) -> list[dict]:
        """`k` prompts new to the model. Prompt/response data: the test
        prompts least like any training prompt (shortest longest run of
        words shared with a training prompt; ties by order), with their
        real responses. Text-only data: `k` empty prompts, i.e.
        unconditional samples."""
        train, test = splits["train"], splits["test"]
        if all(not s["prompt"] for s in train):
            return [dict(id=f"new-{j}", prompt="", year=None, reference=None,
                         kind="empty prompt (unconditional)")
                    for j in range(k)]
        index = overlap_index([s["prompt"] for s in train])
        ranked = sorted(range(len(test)),
                        key=lambda i: (index.longest(test[i]["prompt"]), i))
        return [dict(id=test[i]["id"], prompt=test[i]["prompt"],
                     year=test[i].get("year"), reference=test[i]["response"],
                     kind="test prompt least like the training prompts",
                     opening_overlap=index.longest(test[i]["prompt"]))
                for i in ranked[:k]]


def fill_instruction(template: str, prompt: str) -> str:
    """`template` with the prompt in its `{prompt}` (plain text
    replacement: other braces stay), or after it."""
    if "{prompt}" in template:
        return template.replace("{prompt}", prompt)
    return f"{template}\n\n{prompt}" if prompt else template


GENERIC = Corpus()
