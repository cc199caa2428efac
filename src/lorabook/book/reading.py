"""The human reading of chapter 5's shown generations, pinned to the text.

I read every shown generation of the fine-tuned and the instructed base
model and wrote down, on fixed criteria, what I found (`CRITERIA`), in
`book/readings.yaml`. Generations change with the CPU, the recipe and the
library versions, and a reading of another text would be false. So each
reading carries the SHA-256 of the exact text it judges (`text_hash`);
`reading_for` returns it only while the generation is that text. A
generation without a current reading gets the computed checks
(`computed_checks`) and a notice instead, and the build warns
(`stale_warning`) that the reading must be redone.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from lorabook import metrics as X
from lorabook.corpus import GENERIC
from lorabook.sotu.corpus import SOTU

# What a reader of a continuation looks for: the corpus's criteria
# (`Corpus.reading_criteria`; these are the State of the Union's). The
# qualities are answered yes, partly or no (then a note after a colon);
# the faults none, or what was found.
CRITERIA = SOTU.reading_criteria
QUALITIES = SOTU.reading_qualities
# Every criterion any corpus answers yes/partly/no.
_ALL_QUALITIES = frozenset(QUALITIES) | frozenset(GENERIC.reading_qualities)
ANSWERS = ("yes", "partly", "no")
SYSTEMS = ("finetuned", "base_instructed")
READINGS_FILE = "book/readings.yaml"

# How each computed check is made (printed beside the checks).
CHECK_RULES = {
    "repeats": "share of its word 3-grams that repeat an earlier one "
               "(a loop above 20%)",
    "voice": "\u201cwe\u201d if it uses we/our/us; \u201cthird person\u201d "
             "if it names the president or speaks of him as \u201che\u201d; "
             "\u201cmeta\u201d if it talks about the speech or the task",
    "before its time": "terms of metrics.ANACHRONISMS used before the "
                       "year they entered use",
    "prompt words": "content words (4+ letters) it shares with the opening",
}

_THIRD = ("the president", "president", "he", "his", "him")


def text_hash(text: str) -> str:
    """The SHA-256 of a generation's text (hex), what a reading is pinned to."""
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()


def computed_checks(text: str, prompt: str, year: int | None) -> dict:
    """Checks a program can make of one generation (see `CHECK_RULES`)."""
    ws = X.words(text)
    opening = (prompt or "").split("\n", 1)[-1]
    if X.meta_rate([text]) > 0:
        voice = "meta"
    elif X.says_we(text):
        voice = "we"
    elif any(f" {t} " in f" {' '.join(ws)} " for t in _THIRD):
        voice = "third person"
    else:
        voice = "neither"
    shared = sorted({w for w in X.words(opening) if len(w) >= 4} & set(ws))
    return {"repeats": X.repeated_ngram_rate(text, 3),
            "voice": voice,
            **({"before its time": X.anachronisms(text, year)}
               if year is not None else {}),
            "prompt words": shared}


def criteria_for(cfg) -> dict:
    """The reading criteria of the corpus of `cfg`'s data."""
    from lorabook import data as D
    from lorabook import preprocess as P
    return D.corpus_for(P.config_samples(cfg)).reading_criteria


def load_readings(path: str | Path, criteria: dict | None = None) -> list[dict]:
    """The readings file: a list of entries with id, system, sha256, one
    answer per criterion (`criteria`, default `CRITERIA`) and a `reading`
    (the written judgement)."""
    criteria = CRITERIA if criteria is None else criteria
    import yaml
    path = Path(path)
    if not path.is_file():
        return []
    entries = yaml.safe_load(path.read_text()) or []
    for e in entries:
        need = (("id", "sha256", "reading") if e.get("id") == SUMMARY_ID
                else ("id", "system", "sha256", "reading", *criteria))
        missing = [k for k in need if k not in e]
        from lorabook.config import LorabookError
        if missing:
            raise LorabookError(f"{path}: the reading of {e.get('id')} "
                                f"({e.get('system')}) lacks {missing}")
        for k in (q for q in criteria if q in _ALL_QUALITIES) \
                if e.get("id") != SUMMARY_ID else ():
            if verdict(k, e[k]) is None:
                raise LorabookError(
                    f"{path}: the reading of {e['id']} ({e['system']}) "
                    f"answers {k} with {e[k]!r}; begin it with one of "
                    f"{', '.join(ANSWERS)} (a note may follow a colon)")
    return entries


def verdict(criterion: str, mark) -> str | None:
    """The verdict a mark begins with: yes/partly/no for a quality (None
    if it begins with another word), none/found for a fault."""
    text = str(mark).strip().lower()
    if criterion in _ALL_QUALITIES:
        first = text.replace(":", " ").replace(",", " ").split()[:1]
        return first[0] if first and first[0] in ANSWERS else None
    return "none" if text in ("none", "") else "found"


def verdict_counts(records: list[dict], readings: list[dict],
                   criteria: dict | None = None) -> dict:
    """{system: {criterion: {verdict: count}}} over the shown generations
    that have a current reading, with `n` the number read per system."""
    criteria = CRITERIA if criteria is None else criteria
    out = {}
    for system in SYSTEMS:
        read = [e for r in records
                if (e := reading_for(r, system, readings)) is not None]
        counts = {k: {} for k in criteria}
        for e in read:
            for k in criteria:
                v = verdict(k, e[k])
                counts[k][v] = counts[k].get(v, 0) + 1
        out[system] = {"n": len(read), **counts}
    return out


def reading_for(record: dict, system: str, readings: list[dict]) -> dict | None:
    """The reading of `record`'s `system` generation, if it judges exactly
    this text; None when there is none or it was written for another."""
    h = text_hash(record[system])
    for e in readings:
        if e["id"] == record["id"] and e["system"] == system:
            return e if e["sha256"] == h else None
    return None


SUMMARY_ID = "_summary"


def summary_hash(records: list[dict]) -> str:
    """The hash of every shown generation of both systems, in order: what
    the overall reading (id `SUMMARY_ID`) is pinned to."""
    return text_hash("\n\u241e\n".join(r[s] for r in records for s in SYSTEMS))


def summary_for(records: list[dict], readings: list[dict]) -> str | None:
    """The overall reading of the shown generations, while they are the
    texts it was written about; else None."""
    h = summary_hash(records)
    for e in readings:
        if e.get("id") == SUMMARY_ID:
            return e["reading"] if e.get("sha256") == h else None
    return None


def unread(records: list[dict], readings: list[dict]) -> list[tuple]:
    """(id, system) of every shown generation without a current reading."""
    return [(r["id"], s) for r in records for s in SYSTEMS
            if reading_for(r, s, readings) is None]


def stale_warning(records: list[dict], readings: list[dict]) -> str:
    """The build's warning while any shown generation is unread, else ""."""
    missing = unread(records, readings)
    if not missing and summary_for(records, readings) is not None:
        return ""
    if not missing:
        return ("WARNING (lorabook): the overall reading of the shown "
                f"generations in {READINGS_FILE} was written for other texts; "
                "chapter 5 does not print it. Read them and update it.")
    return (f"WARNING (lorabook): {len(missing)} of the "
            f"{len(records) * len(SYSTEMS)} shown generations have no "
            f"reading written for their exact text (the generations changed); "
            f"chapter 5 prints computed checks for them. Read them and update "
            f"{READINGS_FILE} (`python -m lorabook.book.reading` lists them "
            f"with their hashes).")


def _main() -> int:
    """List the shown generations of the book's run with their hashes and
    whether their reading is current (a starting point for the file)."""
    import json
    from lorabook import train as T
    from lorabook.config import load_config, project_root
    cfg = load_config()
    path = T.run_dir(cfg) / "generations.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    criteria = criteria_for(cfg)
    readings = load_readings(project_root() / READINGS_FILE, criteria)
    for r in records:
        for s in SYSTEMS:
            state = "current" if reading_for(r, s, readings) else "TO READ"
            print(f"- id: {r['id']}\n  system: {s}\n  sha256: "
                  f"{text_hash(r[s])}\n  # {state}: {r[s]!r}")
            if state != "current":
                for k, q in criteria.items():
                    print(f"  {k}:   # {q}")
                print("  reading:")
    state = "current" if summary_for(records, readings) else "TO READ"
    print(f"- id: {SUMMARY_ID}\n  sha256: {summary_hash(records)}\n  # {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
