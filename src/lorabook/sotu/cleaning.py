"""The cleaning rules, sentence splitter and passage cutter of the corpus.

`data/build_sotu.py` builds `data/sotu_passages.jsonl` with them, so the
book can show exactly what the build removed; `data.clean_samples` applies
the rules safe on any English text (`USER_RULES`) to a user's own data.
"""
from __future__ import annotations

import re
from collections import Counter

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
    # A number after a sum with thousands ("$9,126,439. 08.") is its cents,
    # split off by a typo in the source, not a list marker.
    "list_marker": re.compile(
        _SENT_START + r"(?:[IVX]{1,5}\.|\(\d{1,2}\)|\([a-z]\)"
        r"|(?<!\d,\d{3}\.\s)\d{1,2}\.)"
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
    if set(rules) - {"control_chars"}:
        # Spacing is tidied only by rules that rewrite the text; removing
        # control characters alone keeps a user's spacing (code, verse).
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
    """Number of words (runs of non-space characters)."""
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
