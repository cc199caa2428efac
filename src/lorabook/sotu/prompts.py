"""The corpus's prompt form ("1850, Millard Fillmore (Whig):\nOpening.")
and the new prompts chapter 5 asks the model about."""
from __future__ import annotations

import re

# New prompts for the State of the Union data: year/president pairs with no
# address in the corpus (two presidents who died before giving one, the one
# year without an address, and a year after the corpus ends), with opening
# sentences written for this book. `new_prompts` checks at run time that no
# pair occurs in the data and reports the longest run of words each opening
# shares with any passage.
NEW_PROMPTS = [
    dict(year=1841, president="William Henry Harrison", party="Whig",
         opening="The distress of the banks has reached every part of the "
                 "Union since the last session."),
    dict(year=1881, president="James A Garfield", party="Republican",
         opening="The reform of the civil service can no longer be put "
                 "off."),
    dict(year=1933, president="Franklin D Roosevelt", party="Democratic",
         opening="Millions of our people have no work and no savings this "
                 "winter."),
    dict(year=2023, president="Joseph R Biden", party="Democratic",
         opening="Artificial intelligence will change the way every American "
                 "works."),
]

# "1850, Millard Fillmore (Whig):\nOpening sentence."
SOTU_PROMPT = re.compile(r"^(\d{4}), ([^\n(]+?) \(([^\n)]*)\):\n(.+)$", re.S)


def new_prompt_text(p: dict) -> str:
    return f"{p['year']}, {p['president']} ({p['party']}):\n{p['opening']}"


def parse_sotu_prompt(prompt: str) -> dict | None:
    """Year, president, party and opening of a SOTU prompt; else None."""
    m = SOTU_PROMPT.match(prompt or "")
    if not m:
        return None
    return dict(year=int(m[1]), president=m[2], party=m[3], opening=m[4])


def is_sotu(samples) -> bool:
    """True when every prompt has the year/president form of the SOTU data."""
    return bool(samples) and all(parse_sotu_prompt(s["prompt"]) for s in samples)
