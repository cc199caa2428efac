"""Tests of the data stage: loading, errors, cleaning, sentences, splits."""
import hashlib
import json
from pathlib import Path

import pytest

from lorabook.config import REPO_ROOT, LorabookError
from lorabook.data import (clean_samples, describe, load_cleaning_report,
                           load_samples, preview, split_samples)
from lorabook.sotu.cleaning import (CONTINUATION_WORDS, OPENING_WORDS, USER_RULES,
                                    clean_text, make_passages, n_words,
                                    split_sentences)

SOTU = REPO_ROOT / "data" / "sotu_passages.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def pairs(n, groups=None):
    return [{"prompt": f"p{i}", "response": f"answer number {i}",
             **({"g": f"g{i % groups}"} if groups else {})}
            for i in range(n)]


# --- formats ----------------------------------------------------------------

def test_jsonl_pairs_and_extra_columns(tmp_path):
    rows = [dict(r, id=f"x{i}", extra=i) for i, r in enumerate(pairs(5, 2))]
    s = load_samples(write_jsonl(tmp_path / "d.jsonl", rows), min_samples=5,
                     group_column="g")
    assert [x["id"] for x in s] == [f"x{i}" for i in range(5)]
    assert s[1] == {"id": "x1", "group": "g1", "prompt": "p1",
                    "response": "answer number 1", "g": "g1", "extra": 1}


def test_jsonl_text_column_and_default_ids(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t {i}"}
                                           for i in range(3)])
    s = load_samples(p, min_samples=3)
    assert s[2]["id"] == "2" and s[2]["group"] == "2"
    assert s[2]["prompt"] == "" and s[2]["response"] == "t 2"
    p2 = write_jsonl(tmp_path / "e.jsonl", [{"body": "abc", "prompt": "q",
                                             "response": "r"}] * 2)
    s2 = load_samples(p2, text_column="body", min_samples=2)
    assert s2[0]["response"] == "abc" and s2[0]["prompt"] == ""


def test_csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('prompt,response\nhi,"hello, there"\nq,"multi\nline"\n',
                 encoding="utf-8")
    s = load_samples(p, min_samples=2)
    assert s[0]["response"] == "hello, there"
    assert s[1]["response"] == "multi\nline"


def test_txt_lines_and_paragraphs(tmp_path):
    p = tmp_path / "lines.txt"
    p.write_text("one line\ntwo line\nthree\n", encoding="utf-8")
    assert [s["response"] for s in load_samples(p, min_samples=3)] == [
        "one line", "two line", "three"]
    q = tmp_path / "paras.txt"
    q.write_text("a b\nc d\n\ne f\n\n\ng\n", encoding="utf-8")
    assert [s["response"] for s in load_samples(q, min_samples=3)] == [
        "a b c d", "e f", "g"]


def test_saved_dataset_dir(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(pairs(3)),
        "test": datasets.Dataset.from_list(pairs(2))})
    d.save_to_disk(str(tmp_path / "dd"))
    assert len(load_samples(tmp_path / "dd", min_samples=5)) == 5
    datasets.Dataset.from_list(pairs(4)).save_to_disk(str(tmp_path / "ds"))
    assert len(load_samples(tmp_path / "ds", min_samples=4)) == 4


# --- errors -------------------------------------------------------------------

def err(tmp_path, name, content, **kw):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes)
                  else content.encode("utf-8"))
    with pytest.raises(LorabookError) as e:
        load_samples(p, **{"min_samples": 1, **kw})
    return str(e.value)


def test_missing_path(tmp_path):
    with pytest.raises(LorabookError, match="not found.*data_path"):
        load_samples(tmp_path / "nope.jsonl")


def test_empty_file(tmp_path):
    assert "is empty" in err(tmp_path, "e.jsonl", "  \n")


def test_not_utf8(tmp_path):
    msg = err(tmp_path, "l.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert "UTF-8" in msg and "offset 28" in msg and "line 2" in msg


def test_malformed_jsonl_line(tmp_path):
    msg = err(tmp_path, "m.jsonl", '{"text": "a"}\n\n{"text": \n')
    assert "m.jsonl, line 3" in msg and "JSON" in msg


def test_csv_wrong_field_count(tmp_path):
    msg = err(tmp_path, "c.csv", "prompt,response\na,b\nc,d,e\n")
    assert "c.csv, line 3" in msg and "3 fields" in msg


def test_missing_columns_name_the_option(tmp_path):
    msg = err(tmp_path, "c.jsonl", '{"question": "a", "answer": "b"}\n')
    assert "'question', 'answer'" in msg and "--prompt-column" in msg
    assert "--text-column" in msg
    msg = err(tmp_path, "d.jsonl", '{"text": "a"}\n', text_column="body")
    assert "'body'" in msg and "--text-column" in msg


def test_missing_group_column(tmp_path):
    msg = err(tmp_path, "g.jsonl", '{"text": "a"}\n', group_column="speech")
    assert "'speech'" in msg and "group_column" in msg


def test_empty_values(tmp_path):
    msg = err(tmp_path, "e.jsonl", '{"prompt": "a", "response": "x"}\n'
              '{"prompt": "a", "response": "  "}\n'
              '{"prompt": "b", "response": ""}\n')
    assert "2 sample(s)" in msg and "line 2" in msg and "line 3" in msg
    msg = err(tmp_path, "e.csv", "text\nfine\n\" \"\n")
    assert "1 sample(s)" in msg and "line 3" in msg


def test_too_few_samples(tmp_path):
    msg = err(tmp_path, "f.jsonl", '{"text": "a"}\n', min_samples=10)
    assert "only 1 samples" in msg and "min_samples" in msg


def test_unsupported_type(tmp_path):
    assert "unsupported file type" in err(tmp_path, "x.parquet", "abc")


# --- cleaning -----------------------------------------------------------------

def test_reactions_removed_and_counted():
    text, counts, ex = clean_text(
        "We will win. [Applause] We will. (Laughter.) Done [laughter].")
    assert text == "We will win. We will. Done."
    assert counts["audience_reaction"] == 3
    assert "\u27e6[Applause]\u27e7" in ex["audience_reaction"][0]["context"]


def test_editorial_brackets_kept_stage_notes_dropped():
    text, counts, _ = clean_text(
        "Powers reserved to [the States] remain [missing text]. See [p.3] "
        "this[1] and [$]1.1 billion.")
    assert text == "Powers reserved to the States remain. See this and " \
                   "$1.1 billion."
    assert counts["editorial_insertion"] == 2
    assert counts["stage_note"] == counts["page_marker"] == 1
    assert counts["footnote"] == 1


def test_salutation_heading_and_notes():
    text, counts, _ = clean_text(
        "Fellow-Citizens of the Senate and House of Representatives: "
        "FOREIGN AFFAIRS. Our relations are good. II. The Army is ready. "
        "The Address as reported from the floor appears in the "
        "Congressional Record (vol. 100, p. 62).")
    assert text == "Our relations are good. The Army is ready."
    assert counts["salutation"] == counts["section_heading"] == 1
    assert counts["list_marker"] == counts["editorial_note"] == 1


def test_cents_after_a_sum_are_not_a_list_marker():
    # The source writes "$9,126,439. 08." (1846): the "08." is cents.
    text, counts, _ = clean_text(
        "The balance was $9,126,439. 08. The debt is less. 2. The Army.",
        rules=("list_marker",))
    assert text == "The balance was $9,126,439. 08. The debt is less. The Army."
    assert counts["list_marker"] == 1


def test_normalisation():
    text, counts, _ = clean_text("\u201cYes,\u201d  it\u2019s done\u2014now."
                                 "Next one.", rules=("quotes", "dashes",
                                                     "whitespace",
                                                     "missing_space"))
    assert text == "\"Yes,\" it's done-now. Next one."
    assert counts["quotes"] == 3 and counts["whitespace"] == 1


def test_table_sentence_dropped():
    text, counts, _ = clean_text(
        "Receipts were as follows. 1800 - 5,304,937 - 35.02 1810 - "
        "7,239,814 - 36.45. That is all.")
    assert counts["table"] == 1 and "5,304,937" not in text


def test_clean_samples_drops_duplicates_and_reports():
    samples = [{"id": "0", "prompt": "q", "response": "a [Applause] b"},
               {"id": "1", "prompt": "q", "response": "a b"},
               {"id": "2", "prompt": "q", "response": "[Laughter]"}]
    kept, report = clean_samples(samples, rules=USER_RULES)
    assert [s["id"] for s in kept] == ["0"] and kept[0]["response"] == "a b"
    assert report["duplicate"]["removed"] == 1
    assert report["audience_reaction"]["removed"] == 2
    assert report["empty_after_cleaning"]["removed"] == 1


def test_users_text_comes_through_load_time_cleaning_unchanged():
    """Data of another kind: brackets, links, code and spacing are kept;
    only invisible control characters and exact duplicates go."""
    texts = ["See [the docs](https://example.org/a--b) -- or [Applause].",
             "def f(x):\n    return x[0]  # first\n\n\tdone \u2014 \"ok\"",
             "[1] A footnote marker, [sic], and . . . three dots."]
    samples = [dict(id=str(i), prompt=f"Q{i}:  keep  spaces", response=t)
               for i, t in enumerate(texts)]
    samples.append(dict(samples[0]))                      # a duplicate
    samples.append(dict(id="c", prompt="bell", response="ding\x07 dong"))
    kept, report = clean_samples(samples)
    assert [s["response"] for s in kept[:3]] == texts
    assert [s["prompt"] for s in kept[:3]] == [s["prompt"] for s in samples[:3]]
    assert kept[3]["response"] == "ding dong"
    assert set(report) == {"duplicate", "control_chars"}


def test_sotu_passages_get_the_corpus_load_rules():
    from lorabook.data import corpus_for
    from lorabook.sotu.corpus import SOTU
    s = [dict(id="a", prompt="1850, Millard Fillmore (Whig):\nThe harvest.",
              response="Good -- and [Applause] plenty.")]
    assert corpus_for(s) is SOTU
    kept, report = clean_samples(s)
    assert kept[0]["response"] == "Good-and plenty."
    assert {"audience_reaction", "dashes"} <= set(report)


# --- sentences and passages ---------------------------------------------------

def test_sentence_splitter_abbreviations():
    text = ("Mr. Smith met Gen. Grant in the U.S. Army. He paid $3.65 for "
            "No. 5 today. John F. Kennedy spoke! Did he? Yes, at 10 p.m. "
            "in Washington, D.C. and St. Louis.")
    assert split_sentences(text) == [
        "Mr. Smith met Gen. Grant in the U.S. Army.",
        "He paid $3.65 for No. 5 today.", "John F. Kennedy spoke!",
        "Did he?", "Yes, at 10 p.m. in Washington, D.C. and St. Louis."]


def test_make_passages_bounds():
    s = ["one two three four five six."] + ["w " * 10 + "x."] * 6
    out = make_passages(s)
    assert len(out) == 1
    opening, cont = out[0]
    assert opening == s[0] and n_words(cont) == 55
    # An opening needs 6-40 words and a continuation of 25-55 words.
    expected = [(s[1], " ".join(s[2:5]))]
    assert make_passages(["too short."] + s[1:5]) == expected
    assert make_passages([" ".join(["w"] * 41) + "."] + s[1:5]) == expected
    assert make_passages([s[0], "a b c."]) == []


# --- split and describe -------------------------------------------------------

def test_split_grouped_deterministic_and_sized():
    samples = [dict(s, id=str(i), group=s["g"])
               for i, s in enumerate(pairs(200, groups=20))]
    a = split_samples(samples, seed=1, val_fraction=0.1, test_fraction=0.2)
    b = split_samples(samples, seed=1, val_fraction=0.1, test_fraction=0.2)
    assert a == b
    groups = {k: {s["group"] for s in v} for k, v in a.items()}
    assert not groups["train"] & groups["test"]
    assert not groups["train"] & groups["validation"]
    assert not groups["validation"] & groups["test"]
    assert (len(groups["test"]), len(groups["validation"])) == (4, 2)
    c = split_samples(samples, seed=2, val_fraction=0.1, test_fraction=0.2)
    assert c != a
    d = split_samples(samples, seed=1, val_fraction=0.1, test_fraction=0.2,
                      n_train=30, n_val=5, n_test=7)
    assert [len(d[k]) for k in ("train", "validation", "test")] == [30, 5, 7]
    assert {s["id"] for s in d["test"]} <= {s["id"] for s in a["test"]}
    # a split smaller than its size is kept whole, as with None
    e = split_samples(samples, seed=1, val_fraction=0.1, test_fraction=0.2,
                      n_val=21, n_test=7)
    assert e["validation"] == a["validation"] and len(e["validation"]) == 20
    assert e["test"] == d["test"]


def test_describe_and_preview():
    samples = [{"id": "0", "prompt": "a b", "response": "c d e"},
               {"id": "1", "prompt": "", "response": "f"}]
    d = describe(samples, tokenizer=lambda texts, add_special_tokens: {
        "input_ids": [t.split() for t in texts]})
    assert d["count"] == 2 and d["response_words"]["max"] == 3
    assert d["prompt_tokens"]["mean"] == 1.0
    assert preview(samples, 1) == [{"id": "0", "prompt": "a b",
                                    "response": "c d e"}]


# --- the shipped corpus -------------------------------------------------------

def test_shipped_corpus():
    samples = load_samples(SOTU, group_column="address")
    assert len(samples) >= 1000
    assert len({s["id"] for s in samples}) == len(samples)
    for s in samples:
        header, opening = s["prompt"].split("\n", 1)
        assert header == f"{s['year']}, {s['president']} ({s['party']}):"
        assert OPENING_WORDS[0] <= n_words(opening) <= OPENING_WORDS[1]
        assert CONTINUATION_WORDS[0] <= n_words(s["response"]) \
            <= CONTINUATION_WORDS[1]
        assert s["group"] == s["address"]


def test_shipped_checksums():
    data = REPO_ROOT / "data"
    lines = (data / "SHA256SUMS").read_text().splitlines()
    names = set()
    for line in lines:
        digest, name = line.split()
        names.add(name)
        assert hashlib.sha256((data / name).read_bytes()).hexdigest() == digest
    assert names == {"sotu_passages.jsonl", "sotu_cleaning.json"}


def test_cleaning_report_matches_rules():
    report = load_cleaning_report()
    assert report["stats"]["passages"] == sum(
        1 for _ in open(SOTU, encoding="utf-8"))
    assert report["rules"]["audience_reaction"]["removed"] > 0
    assert all(len(r["examples"]) <= 5 for r in report["rules"].values())
    with pytest.raises(LorabookError, match="build_sotu"):
        load_cleaning_report(Path("/nonexistent/report.json"))


def test_cleaning_table_kinds_and_shown_removal():
    from lorabook import data as D
    report = {"rules": {
        "page_marker": {"removed": 3, "examples": [
            {"context": "\u2026long context before the cut \u27e6[Page 12]\u27e7 after\u2026"}]},
        "dashes": {"removed": 9, "examples": [{"context": "a \u27e6--\u27e7 b"}]},
        "footnote": {"removed": 5, "examples": [
            {"context": "x \u27e6" + "n" * 80 + "\u27e7 y"}]}}}
    rows = D.cleaning_table(report)
    assert [(r["rule"], r["kind"]) for r in rows] == [
        ("dashes", "normalised"), ("footnote", "removed"),
        ("page_marker", "removed")]
    # whole words either side, never a word cut in two
    assert D.shown_removal(rows[2]["example"]) == \
        "\u2026before the cut \u27e6[Page 12]\u27e7 after"
    long = D.shown_removal(rows[1]["example"])
    assert long.endswith("n" * 60 + "\u2026\u27e7 y")
    words = "\u2026" + " ".join(["word"] * 20) + "\u27e6 \u27e7" + " ".join(["next"] * 9)
    assert D.shown_removal(words) == "\u2026word word word\u27e6a space\u27e7next next\u2026"
    # invisible or inserted characters are named, not printed
    assert D.shown_removal("peace.\u27e6\u27e7We") == "peace.\u27e6space added\u27e7We"
    # the context's own full stop is kept, only the "..." marks go
    assert D.shown_removal("...a b.\u27e6[1]\u27e7 c d....") == "a b.\u27e6[1]\u27e7 c d."
    assert D.shown_removal("4 1\u27e6\x02\u27e7 per") == "4 1\u27e6U+0002\u27e7 per"


def test_a_shown_removal_names_invisible_characters_of_its_context():
    """A backspace beside the removed one (overstruck text) is named, not
    printed: print has no glyph for it and LaTeX stops on it."""
    from lorabook.data import shown_removal
    shown = shown_removal("...a very _\x08\u27e6\x08\u27e7U\x08N lucky day...")
    assert shown == "a very _[U+0008]\u27e6U+0008\u27e7U[U+0008]N lucky day"
    assert all(c.isprintable() or c.isspace() for c in shown)
    assert shown_removal("...x\n\u27e6--\u27e7y...") == "x\n\u27e6--\u27e7y"
