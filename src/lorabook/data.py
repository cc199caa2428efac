"""Data stage (chapter 1 and 2): load, validate, clean, split, describe.

The loader accepts the shipped corpus and a user's own data alike (JSONL,
CSV, plain text or a saved `datasets` directory); every mistake it can
detect raises `LorabookError` with the file, the line and the fix. The
cleaning rules (`lorabook.sotu.cleaning`) were written for the State of
the Union corpus; which of them run when data are loaded is the corpus's
choice (`corpus_for`): a user's data get only the removal of invisible
control characters.
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

from lorabook.config import REPO_ROOT, LorabookError
from lorabook.corpus import GENERIC, Corpus
from lorabook.sotu.cleaning import MAX_EXAMPLES, RULE_DESCRIPTIONS, clean_text, n_words
from lorabook.sotu.corpus import SOTU

# Corpora that lorabook knows more about than the generic defaults.
KNOWN_CORPORA: tuple[Corpus, ...] = (SOTU,)


def corpus_for(samples: list[dict], instruction: str | None = None) -> Corpus:
    """The known corpus whose form the samples have, else `GENERIC`; with
    `instruction` (a config's), telling the base model that instead."""
    corpus = next((c for c in KNOWN_CORPORA if c.matches(samples)), GENERIC)
    return corpus.with_instruction(instruction)


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

def clean_samples(samples: list[dict], rules: tuple[str, ...] | None = None
                  ) -> tuple[list[dict], dict]:
    """Clean prompt and response of every sample and drop duplicates.

    `rules`: the cleaning rules to run; None, those of the samples' corpus
    (`corpus_for(samples).load_rules`).

    Returns (kept_samples, report) with report = {rule: {"removed": n,
    "examples": [...]}} for every rule that fired.
    """
    if rules is None:
        rules = corpus_for(samples).load_rules
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
    groups the model never saw a sample of. `n_train`, `n_val`, `n_test`:
    at most this many of each split (None: all); a split that holds fewer
    is kept whole.
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
    for name, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        if n is None or len(splits[name]) <= n:
            continue
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


# Cleaning rules that rewrite real speech (its form) rather than remove
# text nobody said.
NORMALISING_RULES = {"dashes", "quotes", "ellipsis", "whitespace",
                     "missing_space", "control_chars", "editorial_insertion"}


def _visible(cut: str) -> str:
    """What a cleaning rule took out, readable in print: an inserted space
    (nothing removed) or invisible characters are named, not printed."""
    if cut == "":
        return "space added"
    if all(not c.isprintable() or c.isspace() for c in cut):
        if set(cut) == {" "}:
            return f"{len(cut)} spaces" if len(cut) > 1 else "a space"
        return " ".join(f"U+{ord(c):04X}" for c in cut)
    return cut


def shown_removal(example: str, before: int = 18, after: int = 14,
                  most: int = 60) -> str:
    """A cleaning example: a few whole words before and after, and the
    removed text (up to `most` characters, invisible ones named) between
    its brackets ⟦ ⟧."""
    ex = example                 # the "..." or "…" that mark its context
    for mark in ("...", "\u2026"):
        ex = ex.removeprefix(mark).removesuffix(mark)
    i, j = ex.find("\u27e6"), ex.find("\u27e7")
    if i < 0 or j < i:
        return ex[:most] + "\u2026"
    cut = _visible(ex[i + 1:j])
    cut = cut if len(cut) <= most else cut[:most].rsplit(" ", 1)[0] + "\u2026"
    left, right = ex[:i], ex[j + 1:]
    if len(left) > before:                      # start at a whole word
        left = left[-before:]
        left = left.split(" ", 1)[1] if " " in left[1:] else left
        left = "\u2026" + left
    if len(right) > after:                      # end at a whole word
        right = right[:after]
        right = right.rsplit(" ", 1)[0] if " " in right[1:-1] else right
        right = right + "\u2026"
    # Invisible characters of the context are named too: print has no glyph
    # for them (a backspace stops LaTeX).
    left, right = ("".join(c if c.isprintable() or c.isspace() else f"[U+{ord(c):04X}]"
                           for c in t) for t in (left, right))
    return left + "\u27e6" + cut + "\u27e7" + right


def cleaning_table(report: dict) -> list[dict]:
    """Rows (rule, kind, removed, what, example) for a table in the book:
    kind "normalised" (first) or "removed", most frequent first."""
    rules = report.get("rules", report)
    rows = []
    for rule, info in rules.items():
        ex = info.get("examples") or [{}]
        rows.append({"rule": rule, "removed": info["removed"],
                     "kind": ("normalised" if rule in NORMALISING_RULES
                              else "removed"),
                     "what": RULE_DESCRIPTIONS.get(rule, ""),
                     "example": ex[0].get("context", ex[0].get("removed",
                                                                 ""))})
    rows.sort(key=lambda r: (r["kind"], -r["removed"]))
    return rows
