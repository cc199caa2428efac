"""Writes the two small foreign datasets the tests build reports on, from
Debian packages (`apt-get install fortunes-min wordnet-base`):

- `fortunes/fortunes.txt`: text only, one fortune per paragraph (fortunes-min's
  fortunes, literature and riddles files), fewer than 1,000 samples (817);
- `wordnet/wordnet_nouns.jsonl` (its card: `wordnet/README.md`): prompt/response, "Define the noun ..." and its
  WordNet 3.0 gloss, with the noun's lexicographer file as a group column
  (`topic`): 1,200 nouns at even steps through WordNet's nouns that have
  one lemma of letters only and a gloss of four words or more, less the
  two that name the State of the Union's subjects (1,198).

Run once: `python tests/data/make_sets.py`; the files are committed.
"""
import json
import re
from pathlib import Path

# Entries that name the shipped corpus's subjects are left out, so that a
# search of a report built on these sets for the State of the Union's words
# finds only what the report itself says.
SOTU_WORDS = re.compile(r"president|congress|state of the union|sotu|annual message", re.I)

HERE = Path(__file__).parent
FORTUNES = Path("/usr/share/games/fortunes")
WORDNET = Path("/usr/share/wordnet")
LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
            "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
            "noun.communication", "noun.event", "noun.feeling", "noun.food",
            "noun.group", "noun.location", "noun.motive", "noun.object",
            "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
            "noun.process", "noun.quantity", "noun.relation", "noun.shape",
            "noun.state", "noun.substance", "noun.time"]


def fortunes() -> str:
    paras = []
    for name in ("fortunes", "literature", "riddles"):
        text = (FORTUNES / name).read_text(encoding="utf-8", errors="replace")
        for entry in text.split("\n%\n"):
            lines = [ln.strip() for ln in entry.strip("%\n").splitlines() if ln.strip()]
            if lines and not SOTU_WORDS.search(" ".join(lines)):
                paras.append(" ".join(lines))
    return "\n\n".join(paras) + "\n"


def wordnet(n: int = 1200) -> list[dict]:
    rows = []
    for line in (WORDNET / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        f = head.split()
        lex, n_words, word = int(f[1]), int(f[3], 16), f[4]
        if n_words != 1 or not re.fullmatch(r"[a-z]+", word):
            continue
        gloss = gloss.strip().split(";")[0].strip()
        if len(gloss.split()) < 4:
            continue
        rows.append(dict(prompt=f"Define the noun \u201c{word}\u201d.",
                         response=gloss[0].upper() + gloss[1:] + ".",
                         topic=LEXNAMES[lex].split(".", 1)[1]))
    step = len(rows) / n
    picked = [rows[int(i * step)] for i in range(n)]
    return [r for r in picked if not SOTU_WORDS.search(json.dumps(r, ensure_ascii=False))]


if __name__ == "__main__":
    (HERE / "fortunes" / "fortunes.txt").write_text(fortunes(), encoding="utf-8")
    with open(HERE / "wordnet" / "wordnet_nouns.jsonl", "w", encoding="utf-8") as f:
        for r in wordnet():
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
