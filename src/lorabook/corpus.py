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
- `instruction(prompt)`: what the instructed base model is told;
- `example_for(prompt, train)`: its one worked example;
- `new_prompts(...)`: prompts new to the model, for chapter 5.
"""
from __future__ import annotations

from typing import Callable

# The cleaning rule names are those of lorabook.sotu.cleaning, whose
# `clean_text` runs them; "control_chars" is safe on any text.
GENERIC_LOAD_RULES = ("control_chars",)


class Corpus:
    """Any data: what every stage does when it knows nothing more."""

    name = "generic"
    load_rules: tuple[str, ...] = GENERIC_LOAD_RULES

    def matches(self, samples: list[dict]) -> bool:
        return True

    def instruction(self, prompt: str) -> str:
        """The base model's fair chance: the same prompt, and the task said."""
        if not prompt:
            return ("Write one passage of the kind of text you were trained "
                    "on. Write only the text, no comment.")
        return ("Reply to the following as its author would. Write only the "
                f"reply, no comment.\n\n{prompt}")

    def example_for(self, prompt: str, train: list[dict]) -> dict:
        """The worked example shown before the task: the first training
        sample."""
        return train[0]

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


GENERIC = Corpus()
