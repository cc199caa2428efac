"""Data stage (chapter 1 and 2): load, validate, clean, split, describe.

The shipped corpus (`data/sotu_passages.jsonl`) is built by
`data/build_sotu.py` with the cleaning rules and the sentence splitter below,
so the book can show exactly what the build removed. The same loader also
accepts a user's own data (JSONL, CSV, plain text or a saved `datasets`
directory); every mistake it can detect raises `LorabookError` with the file,
the line and the fix.
"""
from __future__ import annotations

import csv
import io
import json
import random
import re
import statistics
from collections import Counter
from pathlib import Path

from .config import REPO_ROOT, LorabookError

# --------------------------------------------------------------------------
# Cleaning rules
# --------------------------------------------------------------------------

# What each rule removes and why; the book prints this next to the counts.
RULE_DESCRIPTIONS: dict[str, str] = {
    "control_chars": "invisible control characters (transcription debris)",
    "editorial_note": "notes by the editor, not the President (e.g. 'The "
                      "Address as reported from the floor appears in the "
                      "Congressional Record ...', source citations)",
    "ellipsis": "spaced ellipses '. . .' and '* * *' normalised to '...'",
    "footnote": "footnote markers like [1] or a trailing *, and the "
                "[Footnote 1: ...] texts",
    "page_marker": "page-break markers like [p.3]",
    "audience_reaction": "audience reactions: [Laughter], [Applause], "
                         "(Applause.), [At this point, audience members "
                         "responded.], chants from the floor",
    "speaker_label": "transcript speaker labels ('The President.', "
                     "'THE PRESIDENT:') and interjections by others",
    "stage_note": "bracketed notes that are not speech: [missing text], "
                  "[sic], section titles in brackets",
    "editorial_insertion": "brackets around words the editor supplied "
                           "(e.g. '[the States]'): brackets dropped, words "
                           "kept because they complete the sentence",
    "document_header": "datelines ('THE WHITE HOUSE, December 20, 1911.'), "
                       "part numbers ('PART II.') and signature blocks",
    "salutation": "the formal greeting that opens an address ('Fellow-"
                  "Citizens of the Senate and House of Representatives:'); "
                  "it repeats in almost every address and says nothing",
    "section_heading": "ALL-CAPS section headings of written messages "
                       "('TREASURY DEPARTMENT.', 'FOREIGN AFFAIRS.')",
    "list_marker": "enumeration markers ('II.', 'ART. III.', '(2)') at the "
                   "start of a sentence",
    "table": "sentences that are flattened tables (mostly numbers and "
             "'-' separators), not prose",
    "quotes": "curly quotes and apostrophes normalised to straight ones",
    "dashes": "em/en dashes and '--' normalised to the corpus's '-'",
    "missing_space": "a missing space between two sentences ('peace.We')",
    "whitespace": "runs of spaces, tabs and non-breaking spaces collapsed",
    "duplicate": "exact duplicate (prompt, response) pairs dropped",
    "empty_after_cleaning": "samples whose response is empty once cleaned",
}

# Rules for a user's own data: only those that are safe on any English text.
# The SOTU-specific ones (salutation, headings, tables, ...) stay off.
USER_RULES = ("control_chars", "ellipsis", "footnote", "page_marker",
              "audience_reaction", "stage_note", "editorial_insertion",
              "quotes", "dashes", "whitespace")
# The order matters: whitespace first so the sentence-start patterns see
# single spaces; reactions before dashes ("again\u2014(applause)\u2014turning");
# the salutation before the headings it would otherwise hide.
RULE_ORDER = ("control_chars", "whitespace", "quotes", "missing_space",
              "editorial_note", "ellipsis", "footnote", "page_marker",
              "audience_reaction", "speaker_label", "stage_note",
              "editorial_insertion", "document_header", "salutation",
              "dashes", "section_heading", "list_marker", "table")
SOTU_RULES = RULE_ORDER

MAX_EXAMPLES = 5
_CONTEXT = 40

_SENT_START = r"(?:^|(?<=[.!?:]\s)|(?<=[.!?]\"\s))"
_TITLE = r"(?:Mr|Mrs|MR|Messrs)\."

_RE = {
    "control_chars": re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"),
    "editorial_note": re.compile(
        r"The [Aa]ddress as reported from the floor appears in the "
        r"Congressional Record[^)]*\)\.?"
        r"|Messages and Papers of the Presidents, [^,]+, vol\. \d+, "
        r"p\.\s?\d+"),
    "ellipsis": re.compile(r"\*(?:\s\*){2,}|\.(?:\s\.){2,}"),
    "footnote": re.compile(
        r"\[Footnote \d+:[^\]]*\]|\[\d+[a-z]{0,2}\]"
        r"|(?<=[\w.\]\"])\*(?=\s|$)"),
    "page_marker": re.compile(r"\[p\.\s?\d+\]"),
    "audience_reaction": re.compile(
        r"\[(?:laughter|applause)[^\]]*\]|\((?:laughter|applause)\.?\)"
        r"|\[At this point, audience members [^\]]*\]"
        r"|\[At this point, in the [^\]]*\]"
        r"|Audience members\.\s.*?(?=\s*The President\.)",
        re.IGNORECASE),
    "speaker_label": re.compile(
        r"THE VICE PRESIDENT:.*?(?=THE PRESIDENT:)"
        r"|(?:^|(?<=[.!?\]]\s)|(?<=[.!?\]]\s\s))The President\.\s*"
        r"|THE PRESIDENT:\s*"),
    "stage_note": re.compile(
        r"\[(?:missing text|sic|illegible|inaudible)\]"
        r"|\[On [A-Z][^\]]*Affairs\.\]", re.IGNORECASE),
    "editorial_insertion": re.compile(r"\[([^\[\]]*)\]"),
    "document_header": re.compile(
        r"THE WHITE HOUSE, [A-Z][a-z]+ \d{1,2}, \d{4}\.\s*"
        r"(?:To the Senate and House of Representatives:\s*)?"
        r"|\b(?:PART|Part) [IVX]+\."
        r"|\(Signed\)(?:\s*[A-Z]+\.?(?![a-z]))+"),
    "salutation": re.compile(
        _SENT_START +
        r"(?:" + _TITLE + r"|Madam|Fellow|Gentlemen|GENTLEMEN|To [Tt]he"
        r"|TO THE|The Senate|Members|MEMBERS|Senators)"
        r"(?:" + _TITLE + r"|[^:.!?]){0,300}?:\s*"),
    "section_heading": re.compile(
        _SENT_START +
        r"((?:[A-Z][A-Z'&,.-]*[A-Z.,]\s+)+)(?=[A-Z][a-z])"),
    "list_marker": re.compile(
        _SENT_START + r"(?:[IVX]{1,5}\.|\(\d{1,2}\)|\([a-z]\)|\d{1,2}\.)"
        r"\s+(?=[A-Z\"])"),
    "quotes": re.compile(r"[\u2018\u2019\u201b\u2032]|[\u201c\u201d\u201e"
                         r"\u2033]"),
    "dashes": re.compile(r"\s*(?:[\u2014\u2013]|--)[\u2014\u2013-]*\s*"
                         r"|\u2011"),
    "missing_space": re.compile(r"(?<=[a-z][.!?])(?=[A-Z][a-z])"),
    "whitespace": re.compile(r"^\s+|\s+$|[ \t\u00a0\u2009\u202f]{2,}"
                             r"|[\t\u00a0\u2009\u202f]|[ \t]*\n[ \t]*"),
}


def _replacement(rule: str, m: re.Match) -> str:
    if rule == "editorial_insertion":
        return m.group(1)
    if rule == "quotes":
        return "'" if m.group(0) in "\u2018\u2019\u201b\u2032" else '"'
    if rule == "dashes":
        return "-"
    if rule == "ellipsis":
        return "..."
    if rule == "missing_space":
        return " "
    if rule == "whitespace":
        if m.start() == 0 or m.end() == len(m.string):
            return ""
        return "\n" if "\n" in m.group(0) else " "
    return ""


def _heading_ok(words: str) -> bool:
    """Is an ALL-CAPS run a section heading (not 'A' or 'NATO')?"""
    toks = words.split()
    letters = sum(ch.isalpha() for ch in words)
    if letters < 4 or any(sum(c.isalpha() for c in t) < 2 for t in toks):
        return False
    # A single short word without a full stop may be an acronym.
    return len(toks) > 1 or toks[0].endswith(".") or letters >= 6


def _record(stats, examples, rule, text, m, source):
    stats[rule] += 1
    ex = examples.setdefault(rule, [])
    if len(ex) < MAX_EXAMPLES:
        left = text[max(0, m.start() - _CONTEXT):m.start()]
        right = text[m.end():m.end() + _CONTEXT]
        item = {"removed": m.group(0),
                "context": f"...{left}\u27e6{m.group(0)}\u27e7{right}..."}
        if source is not None:
            item["source"] = source
        ex.append(item)


def _apply(rule, text, stats, examples, source):
    pat = _RE[rule]

    def repl(m):
        if rule == "section_heading" and not _heading_ok(m.group(1)):
            return m.group(0)
        if rule == "whitespace" and m.group(0) in (" ", "\n") and \
                0 < m.start() and m.end() < len(text):
            return m.group(0)
        _record(stats, examples, rule, text, m, source)
        return _replacement(rule, m)

    if rule == "salutation":
        # Only the greeting that opens the text (after "Thank you." etc.).
        m = pat.search(text, 0, 600) if text else None
        while m is not None and m.start() > 120:
            m = None
        if m is None:
            return text
        _record(stats, examples, rule, text, m, source)
        return text[:m.start()] + text[m.end():]
    return pat.sub(repl, text)


def is_table_sentence(sentence: str) -> bool:
    """A flattened table row: mostly numbers and '-'/'+' separators."""
    toks = sentence.split()
    if "____" in sentence or " - - " in sentence:
        return True
    if len(toks) < 4:
        return False
    numeric = sum(bool(re.fullmatch(r"[-+$(]*[\d.,]+%?[)]*[.,;:]?|[-+]|"
                                    r"\.{3,}", t)) for t in toks)
    return numeric >= 4 and numeric / len(toks) >= 0.4 or \
        sentence.count(" - ") >= 3


def clean_text(text: str, rules: tuple[str, ...] = SOTU_RULES, *,
               source: str | None = None
               ) -> tuple[str, Counter, dict[str, list[dict]]]:
    """Apply the cleaning rules in order.

    Returns (clean_text, counts_by_rule, examples_by_rule); each example is
    {"removed", "context"} with the removed span marked ⟦like this⟧, plus
    "source" when given (the build script passes the address).
    """
    stats: Counter = Counter()
    examples: dict[str, list[dict]] = {}
    punct = r"[,;:!?]"
    tidy = False        # is `text` as the space clean-up below leaves it?
    for rule in RULE_ORDER:
        if rule == "ellipsis":
            punct = r"[,;:!?.]"  # no spaced ". . ." left to protect
            tidy = False
        if rule not in rules or rule == "table":
            continue
        new = _apply(rule, text, stats, examples, source)
        tidy = tidy and new == text
        text = new
        if rule != "control_chars" and not tidy:
            # A removal leaves two spaces (or one before punctuation). The
            # clean-up is idempotent, so it is skipped while nothing changed
            # (most texts: it was two thirds of the regex calls).
            text = re.sub(r"(?<=\S)[ ]{2,}", " ", text)
            text = re.sub(r"^[ ]+|[ ]+$|[ ]+(?=" + punct + r"(?:\s|$))", "",
                          text)
            tidy = True
    if "table" in rules:
        kept = []
        for s in split_sentences(text):
            if is_table_sentence(s):
                m = re.match(r".{0,200}", s, re.S)
                _record(stats, examples, "table", s, m, source)
            else:
                kept.append(s)
        text = " ".join(kept)
    text = re.sub(r"[ ]{2,}", " ", text).strip()
    return text, stats, examples


# --------------------------------------------------------------------------
# Sentences and passages
# --------------------------------------------------------------------------

# A full stop after these does not end a sentence.
ABBREVIATIONS = frozenset("""
Mr Mrs Ms Messrs Dr St Gen Gens Col Lt Capt Cmdr Comdr Adm Maj Sgt Gov Sen
Sens Rep Reps Hon Jr Sr Rev Prof Co Corp Inc Ltd Bros Mt Ft Jan Feb Mar Apr
Aug Sept Sep Oct Nov Dec vs viz etc cf al Esq Geo Wm Chas Jas Thos Jno Hon
Stat Cong sess Ave Dept Gov Supt
""".split())
# These are abbreviations only before a number ("No. 5", "vol. 6").
NUMBER_ABBREVIATIONS = frozenset("No Nos no nos p pp vol Vol Art art ART "
                                 "Sec sec ch Ch Ex Doc H.R S".split())

_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s+[\"'(\[]*[A-Z0-9$])")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences without breaking 'Mr.', 'U.S.', 'No. 5',
    initials ('John F. Kennedy') or decimals ('3.65')."""
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        before = text[max(start, m.start() - 60):m.start() + 1]
        word = re.search(r"([\w.$]+)\.$", before)
        if text[m.start()] == "." and word:
            tok = word.group(1)
            after = text[end:].lstrip()
            last = tok.rsplit(".", 1)[-1]
            if tok in ABBREVIATIONS or last in ABBREVIATIONS:
                continue
            if (tok in NUMBER_ABBREVIATIONS or last in NUMBER_ABBREVIATIONS
                    ) and after[:1].isdigit():
                continue
            # Initials and dotted acronyms: "F.", "U.S.", "D.C."
            if len(last) == 1 and last.isalpha() and last.isupper():
                continue
        s = text[start:end].strip()
        if s:
            sentences.append(s)
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def n_words(text: str) -> int:
    return len(text.split())


OPENING_WORDS = (6, 40)        # the opening sentence that becomes the prompt
CONTINUATION_WORDS = (25, 55)  # the sentences that follow: the response


def make_passages(sentences: list[str], opening=OPENING_WORDS,
                  continuation=CONTINUATION_WORDS) -> list[tuple[str, str]]:
    """Greedily cut non-overlapping (opening, continuation) passages.

    A sentence of opening[0]..opening[1] words may open a passage; the
    following sentences are added while the continuation stays within
    continuation[1] words; the passage is kept if the continuation has at
    least continuation[0] words. Otherwise the next sentence is tried.
    """
    out, i, n = [], 0, len(sentences)
    lengths = [n_words(s) for s in sentences]
    while i < n:
        if not opening[0] <= lengths[i] <= opening[1]:
            i += 1
            continue
        j, words = i + 1, 0
        while j < n and words + lengths[j] <= continuation[1]:
            words += lengths[j]
            j += 1
        if words >= continuation[0]:
            out.append((sentences[i], " ".join(sentences[i + 1:j])))
            i = j
        else:
            i += 1
    return out


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise LorabookError(
            f"{path} is not UTF-8 text: undecodable byte at offset {e.start} "
            f"(line {line}). Re-save the file as UTF-8 (e.g. `iconv -f "
            f"latin1 -t utf-8`).") from None


def _read_jsonl(path: Path, text: str):
    rows, where = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LorabookError(
                f"{path}, line {i}: not valid JSON ({e.msg}, column "
                f"{e.colno}). Each line of a JSONL file must be one JSON "
                f"object; fix or delete that line.") from None
        if not isinstance(obj, dict):
            raise LorabookError(
                f"{path}, line {i}: expected a JSON object like "
                f'{{"prompt": ..., "response": ...}}, got '
                f"{type(obj).__name__}.")
        rows.append(obj)
        where.append(f"line {i}")
    return rows, where


def _read_csv(path: Path, text: str):
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise LorabookError(f"{path} is empty.") from None
    except csv.Error as e:
        raise LorabookError(f"{path}, line 1: unreadable CSV header ({e}).")
    if len(set(header)) != len(header):
        dup = sorted(h for h, c in Counter(header).items() if c > 1)
        raise LorabookError(f"{path}, line 1: duplicate column name(s) "
                            f"{dup}; rename them.")
    rows, where = [], []
    try:
        for row in reader:
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                raise LorabookError(
                    f"{path}, line {reader.line_num}: {len(row)} fields but "
                    f"the header has {len(header)} ({', '.join(header)}). "
                    f"Quote values that contain commas or line breaks.")
            rows.append(dict(zip(header, row)))
            where.append(f"line {reader.line_num}")
    except csv.Error as e:
        raise LorabookError(
            f"{path}, line {reader.line_num}: malformed CSV ({e}).") from None
    return rows, where


def _read_txt(path: Path, text: str):
    rows, where = [], []
    lines = text.splitlines()
    if re.search(r"\n[ \t]*\n", text.strip()):
        # Blank lines separate paragraphs: one sample per paragraph.
        para, first = [], None
        for i, ln in enumerate(lines + [""], start=1):
            if ln.strip():
                if not para:
                    first = i
                para.append(ln.strip())
            elif para:
                rows.append({"text": " ".join(para)})
                where.append(f"line {first}")
                para = []
    else:
        for i, ln in enumerate(lines, start=1):
            if ln.strip():
                rows.append({"text": ln.strip()})
                where.append(f"line {i}")
    return rows, where


def _read_dataset_dir(path: Path):
    try:
        import datasets
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any failure means "not a dataset"
        raise LorabookError(
            f"{path} is a directory but not a dataset saved with "
            f"`Dataset.save_to_disk` ({type(e).__name__}: {e}). Point "
            f"data_path at a .jsonl, .csv or .txt file, or at such a "
            f"directory.") from None
    if isinstance(ds, datasets.DatasetDict):
        # Our own seeded, grouped split replaces whatever split it had.
        names = sorted(ds, key=lambda k: (k != "train", k))
        rows, where = [], []
        for name in names:
            for i, r in enumerate(ds[name]):
                rows.append(dict(r))
                where.append(f"split {name!r} row {i}")
        return rows, where
    return [dict(r) for r in ds], [f"row {i}" for i in range(len(ds))]


def _as_text(v) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else str(v)


def load_samples(path, *, text_column: str | None = None,
                 prompt_column: str = "prompt",
                 response_column: str = "response",
                 group_column: str | None = None,
                 min_samples: int = 1000) -> list[dict]:
    """Load and validate samples from JSONL, CSV, TXT or a datasets dir.

    Every sample gets `id`, `group`, `prompt` and `response`; other columns
    are kept. Single-text data (a `text` column, `text_column`, or a .txt
    file) becomes prompt "" and response = the text. Nothing is written.
    """
    path = Path(path)
    if not path.exists():
        raise LorabookError(
            f"data file not found: {path}. Set `data_path` (CLI "
            f"`--data-path`) to an existing .jsonl, .csv or .txt file or a "
            f"saved datasets directory.")
    if path.is_dir():
        rows, where = _read_dataset_dir(path)
        kind = "dataset"
    else:
        raw = path.read_bytes()
        if not raw.strip():
            raise LorabookError(f"{path} is empty; it needs at least "
                                f"{min_samples} samples.")
        text = _decode(path, raw)
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json", ".ndjson"):
            rows, where = _read_jsonl(path, text)
            kind = "JSONL"
        elif suffix == ".csv":
            rows, where = _read_csv(path, text)
            kind = "CSV"
        elif suffix in (".txt", ".text", ".md"):
            rows, where = _read_txt(path, text)
            kind = "text"
        else:
            raise LorabookError(
                f"{path}: unsupported file type {suffix or '(none)'!r}; use "
                f".jsonl, .csv, .txt or a saved datasets directory.")
    if not rows:
        raise LorabookError(f"{path} holds no samples.")

    columns = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    found = ", ".join(map(repr, columns))
    if text_column is not None:
        if text_column not in columns:
            raise LorabookError(
                f"{path}: text column {text_column!r} not found; columns "
                f"found: {found}. Set `text_column` (CLI `--text-column`) to "
                f"one of them.")
        mode = "text"
    elif prompt_column in columns and response_column in columns:
        mode = "pair"
    elif "text" in columns and prompt_column not in columns \
            and response_column not in columns:
        text_column, mode = "text", "text"
    else:
        missing = [c for c in (prompt_column, response_column)
                   if c not in columns]
        raise LorabookError(
            f"{path}: column(s) {', '.join(map(repr, missing))} not found; "
            f"columns found: {found}. Set `prompt_column` and "
            f"`response_column` (CLI `--prompt-column`, `--response-column`)"
            f" to the right names, or `text_column` (`--text-column`) for "
            f"single-text data.")
    if group_column is not None and group_column not in columns:
        raise LorabookError(
            f"{path}: group column {group_column!r} not found; columns "
            f"found: {found}. Set `group_column` (CLI `--group-column`) to "
            f"one of them, or to null to split sample by sample.")

    samples, empty = [], []
    resp_col = text_column if mode == "text" else response_column
    used = {resp_col} | ({prompt_column} if mode == "pair" else set())
    for i, (r, w) in enumerate(zip(rows, where)):
        response = _as_text(r.get(resp_col))
        if not response.strip():
            empty.append(w)
            continue
        sid = _as_text(r["id"]) if r.get("id") is not None else str(i)
        group = sid
        if group_column is not None:
            g = r.get(group_column)
            group = _as_text(g) if g is not None else sid
        prompt = _as_text(r.get(prompt_column)) if mode == "pair" else ""
        rec = {k: v for k, v in r.items() if k not in used}
        rec.update(id=sid, group=group, prompt=prompt, response=response)
        samples.append(rec)
    if empty:
        raise LorabookError(
            f"{path}: {len(empty)} sample(s) have an empty or whitespace-only "
            f"{resp_col!r} value ({', '.join(empty[:5])}"
            f"{', ...' if len(empty) > 5 else ''}). Remove those rows or fill "
            f"them in.")
    if len(samples) < min_samples:
        raise LorabookError(
            f"{path}: only {len(samples)} samples, fewer than min_samples="
            f"{min_samples}. Add data, or lower `min_samples` (CLI "
            f"`--min-samples`) if a small run is what you want.")
    return samples


# --------------------------------------------------------------------------
# Cleaning, splitting, describing
# --------------------------------------------------------------------------

def clean_samples(samples: list[dict], rules: tuple[str, ...] = USER_RULES
                  ) -> tuple[list[dict], dict]:
    """Clean prompt and response of every sample and drop duplicates.

    Returns (kept_samples, report) with report = {rule: {"removed": n,
    "examples": [...]}} for every rule that fired.
    """
    stats: Counter = Counter()
    examples: dict[str, list[dict]] = {}
    seen, kept = set(), []
    for s in samples:
        out = dict(s)
        for key in ("prompt", "response"):
            out[key], st, ex = clean_text(s[key], rules, source=s.get("id"))
            stats.update(st)
            for rule, items in ex.items():
                room = MAX_EXAMPLES - len(examples.setdefault(rule, []))
                examples[rule].extend(items[:max(room, 0)])
        if not out["response"].strip():
            stats["empty_after_cleaning"] += 1
            if len(examples.setdefault("empty_after_cleaning", [])) < 5:
                examples["empty_after_cleaning"].append(
                    {"removed": s["response"], "source": s.get("id")})
            continue
        key = (out["prompt"], out["response"])
        if key in seen:
            stats["duplicate"] += 1
            if len(examples.setdefault("duplicate", [])) < MAX_EXAMPLES:
                examples["duplicate"].append(
                    {"removed": out["response"][:200], "source": s.get("id")})
            continue
        seen.add(key)
        kept.append(out)
    report = {rule: {"removed": stats[rule], "examples": examples.get(rule, [])}
              for rule in RULE_DESCRIPTIONS if stats[rule]}
    return kept, report


def split_samples(samples: list[dict], *, seed: int, val_fraction: float,
                  test_fraction: float, n_train: int | None = None,
                  n_val: int | None = None, n_test: int | None = None
                  ) -> dict[str, list[dict]]:
    """Seeded split by whole groups, then an optional seeded subset.

    Groups (e.g. addresses) never straddle two splits, so the test set holds
    speeches the model never saw a sentence of.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise LorabookError("val_fraction and test_fraction must be in (0, 1) "
                            "and sum to less than 1")
    groups = sorted({s["group"] for s in samples})
    if len(groups) < 3:
        raise LorabookError(
            f"need at least 3 groups to split into train/validation/test, "
            f"found {len(groups)}; set `group_column` to null to split "
            f"sample by sample.")
    random.Random(seed).shuffle(groups)
    n_te = max(1, round(test_fraction * len(groups)))
    n_va = max(1, round(val_fraction * len(groups)))
    if n_te + n_va >= len(groups):
        raise LorabookError(f"too few groups ({len(groups)}) for the "
                            f"requested fractions; lower them.")
    which = {g: "test" for g in groups[:n_te]}
    which.update({g: "validation" for g in groups[n_te:n_te + n_va]})
    splits: dict[str, list[dict]] = {"train": [], "validation": [],
                                     "test": []}
    for s in samples:
        splits[which.get(s["group"], "train")].append(s)
    for name, n, opt in (("train", n_train, "n_train"),
                         ("validation", n_val, "n_val"),
                         ("test", n_test, "n_test")):
        if n is None:
            continue
        if len(splits[name]) < n:
            raise LorabookError(
                f"the {name} split has {len(splits[name])} samples, fewer "
                f"than {opt}={n}; lower `{opt}` or set it to null for all.")
        idx = random.Random(f"{seed}-{name}").sample(
            range(len(splits[name])), n)
        splits[name] = [splits[name][i] for i in sorted(idx)]
    return splits


def _summary(values: list[int]) -> dict:
    if not values:
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {"mean": round(statistics.fmean(values), 2),
            "median": float(statistics.median(values)),
            "min": min(values), "max": max(values)}


def describe(samples: list[dict], tokenizer=None) -> dict:
    """Count and length statistics in words (and tokens, given a tokenizer)."""
    out = {"count": len(samples)}
    for key in ("prompt", "response"):
        texts = [s[key] for s in samples]
        out[f"{key}_words"] = _summary([n_words(t) for t in texts])
        if tokenizer is not None:
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"] \
                if texts else []
            out[f"{key}_tokens"] = _summary([len(x) for x in ids])
    return out


def preview(samples: list[dict], n: int = 3) -> list[dict]:
    """The first n samples, reduced to the fields a reader needs."""
    keys = ("id", "group", "prompt", "response")
    return [{k: s[k] for k in keys if k in s} for s in samples[:n]]


def load_cleaning_report(path=None) -> dict:
    """The build script's per-rule cleaning report of the shipped corpus."""
    p = Path(path) if path is not None else REPO_ROOT / "data" / \
        "sotu_cleaning.json"
    if not p.is_file():
        raise LorabookError(f"cleaning report not found: {p}. Rebuild it "
                            f"with `python data/build_sotu.py`.")
    return json.loads(p.read_text(encoding="utf-8"))


def cleaning_table(report: dict) -> list[dict]:
    """Rows (rule, removed, what, example) for a table in the book."""
    rules = report.get("rules", report)
    rows = []
    for rule, info in rules.items():
        ex = info.get("examples") or [{}]
        rows.append({"rule": rule, "removed": info["removed"],
                     "what": RULE_DESCRIPTIONS.get(rule, ""),
                     "example": ex[0].get("context", ex[0].get("removed",
                                                                 ""))})
    return rows
