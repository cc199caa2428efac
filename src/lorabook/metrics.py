"""Text metrics for the evaluation chapter (chapter 5): overlap with
references, diversity, memorization, voice and anachronisms (the era
classifier is in `lorabook.sotu.era`).

Pure functions over strings; no model is loaded here. ROUGE and BLEU come
from `rouge-score` and `sacrebleu` directly, because the `evaluate` package
fetches its metric scripts from the Hub and fails offline.
"""
from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lorabook.config import LorabookError

__all__ = [
    "words", "rouge_l", "rouge_l_scores", "bleu",
    "distinct_n", "repeated_ngram_rate", "mean_repeated_ngram_rate",
    "mean_length_words",
    "Overlap", "OverlapIndex", "build_overlap_index",
    "longest_overlap", "flag_copies", "echo_length",
    "ANACHRONISMS", "anachronisms", "says_we", "first_person_plural_rate", "loop_rate", "META_PHRASES", "meta_rate",
    "summarize_generations",
]

# Apostrophes are dropped ("nation's" -> "nations") so a contraction stays
# one word; every other punctuation mark separates words, so "war--and" or
# "war—and" is two words whichever dash the source used.
_APOSTROPHES = re.compile(r"['\u2019\u2018`]")
_PUNCT = re.compile(r"[^\w\s]|_")


def words(text: str) -> list[str]:
    """Lowercase, strip punctuation, split on whitespace."""
    if not text:
        return []
    text = _APOSTROPHES.sub("", text.lower())
    return _PUNCT.sub(" ", text).split()


def _check_pair(predictions: Sequence[str], references: Sequence[str]):
    if isinstance(predictions, str) or isinstance(references, str):
        raise LorabookError(
            "predictions and references must be lists of strings, not a "
            "single string; wrap it in a list")
    if len(predictions) != len(references):
        raise LorabookError(
            f"got {len(predictions)} predictions but {len(references)} "
            "references; pass one reference per prediction, in order")
    if len(predictions) == 0:
        raise LorabookError("nothing to score: the prediction list is empty")


def _check_texts(texts: Sequence[str]):
    if isinstance(texts, str):
        raise LorabookError(
            "expected a list of strings, got a single string; wrap it in a "
            "list")
    if len(texts) == 0:
        raise LorabookError("nothing to score: the list of texts is empty")


# --- overlap with the reference continuation -----------------------------

@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_scores(predictions: Sequence[str],
                   references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference (0 to 1)."""
    _check_pair(predictions, references)
    scorer = _rouge_scorer()
    # rouge_score's signature is score(target, prediction).
    return [scorer.score(ref or "", pred or "")["rougeL"].fmeasure
            for pred, ref in zip(predictions, references)]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (stemmed), 0 to 1."""
    return float(np.mean(rouge_l_scores(predictions, references)))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU from sacrebleu (default 13a tokenizer), 0 to 100."""
    _check_pair(predictions, references)
    import sacrebleu
    preds = [p or "" for p in predictions]
    refs = [r or "" for r in references]
    return float(sacrebleu.corpus_bleu(preds, [refs]).score)


# --- diversity ------------------------------------------------------------

def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _check_n(n: int):
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise LorabookError(f"n-gram size must be a positive integer, got {n!r}")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams, pooled over the texts (word level).

    N-grams never span two texts. Returns 0.0 if the texts hold no n-gram
    at all (e.g. every generation is empty).
    """
    # Adapted from the definition of distinct-n (Li et al., 2016: distinct
    # n-grams / all n-grams): pooled over the texts at word level, n-grams
    # never spanning two texts, 0.0 when there is none.
    _check_texts(texts)
    _check_n(n)
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _ngrams(words(text), n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """Share of a text's n-grams that already occurred earlier in it.

    A model stuck in a loop ("and the and the and the") scores near 1;
    ordinary prose scores near 0. Texts shorter than n score 0.
    """
    _check_n(n)
    grams = _ngrams(words(text), n)
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        if g in seen:
            repeats += 1
        else:
            seen.add(g)
    return repeats / len(grams)


def mean_repeated_ngram_rate(texts: Sequence[str], n: int = 3) -> float:
    """Mean of `repeated_ngram_rate` over texts (each text weighs the same)."""
    _check_texts(texts)
    return float(np.mean([repeated_ngram_rate(t, n) for t in texts]))


def mean_length_words(texts: Sequence[str]) -> float:
    """Mean number of words per text (same tokenisation as the others)."""
    _check_texts(texts)
    return float(np.mean([len(words(t)) for t in texts]))


# --- memorization: longest span shared with any training text -------------

@dataclass(frozen=True)
class Overlap:
    """The longest word run a text shares with the training set."""
    length: int            # in words; 0 if not even one word is shared
    train_index: int       # which training text (-1 if length == 0)
    span: str              # the shared words, lowercased, space-joined


class OverlapIndex:
    """Suffix automaton over the words of all training texts.

    Built once in time linear in the corpus; afterwards the longest common
    contiguous word sequence between a query and *any* training text is
    found in one left-to-right pass over the query, exactly and at every
    length. A set of n-grams answers only "is a run of n words shared";
    the longest run would need one set per length (millions of tuples each
    for the corpus), so the automaton is kept. Texts are separated by
    unique symbols so no match crosses two texts.
    """

    def __init__(self, train_texts: Sequence[str]):
        if isinstance(train_texts, str):
            raise LorabookError(
                "train_texts must be a list of strings, not one string")
        self.vocab: dict[str, int] = {}
        self.tokens: list[int] = []     # the concatenated corpus
        self.starts: list[int] = []     # offset of each text in `tokens`
        self.n_texts = len(train_texts)
        nxt: list[dict[int, int]] = [{}]
        link = [-1]
        length = [0]
        endpos = [-1]                   # end of the first occurrence
        last = 0
        vocab = self.vocab
        sep = -1
        for text in train_texts:
            self.starts.append(len(self.tokens))
            ids = [vocab.setdefault(w, len(vocab)) for w in words(text)]
            ids.append(sep)             # a symbol unique to this text
            sep -= 1
            for c in ids:
                pos = len(self.tokens)
                self.tokens.append(c)
                cur = len(length)
                nxt.append({})
                link.append(0)
                length.append(length[last] + 1)
                endpos.append(pos)
                p = last
                while p != -1 and c not in nxt[p]:
                    nxt[p][c] = cur
                    p = link[p]
                if p != -1:
                    q = nxt[p][c]
                    if length[p] + 1 == length[q]:
                        link[cur] = q
                    else:
                        clone = len(length)
                        nxt.append(dict(nxt[q]))
                        link.append(link[q])
                        length.append(length[p] + 1)
                        endpos.append(endpos[q])
                        while p != -1 and nxt[p].get(c) == q:
                            nxt[p][c] = clone
                            p = link[p]
                        link[q] = clone
                        link[cur] = clone
                last = cur
        self._next, self._link, self._len, self._end = nxt, link, length, endpos
        self._words_by_id: dict[int, str] | None = None

    def __len__(self) -> int:
        return self.n_texts

    def match(self, text: str) -> Overlap:
        """Longest run of `text`'s words that occurs in a training text."""
        nxt, link, length = self._next, self._link, self._len
        v = 0
        cur = 0
        best, best_state = 0, 0
        toks = words(text)
        for w in toks:
            c = self.vocab.get(w)
            if c is None:               # unseen word: no match spans it
                v, cur = 0, 0
                continue
            while v and c not in nxt[v]:
                v = link[v]
                cur = length[v]
            if c in nxt[v]:
                v = nxt[v][c]
                cur += 1
            if cur > best:
                best, best_state = cur, v
        if best == 0:
            return Overlap(0, -1, "")
        end = self._end[best_state]
        start = end - best + 1
        doc = bisect.bisect_right(self.starts, start) - 1
        if self._words_by_id is None:
            self._words_by_id = {i: w for w, i in self.vocab.items()}
        span = " ".join(self._words_by_id[t]
                        for t in self.tokens[start:end + 1])
        return Overlap(best, doc, span)

    def longest(self, text: str) -> int:
        return self.match(text).length


def build_overlap_index(train_texts: Sequence[str]) -> OverlapIndex:
    """Index the training texts for `longest_overlap` / `flag_copies`."""
    return OverlapIndex(train_texts)


def _check_index(index):
    if not isinstance(index, OverlapIndex):
        raise LorabookError(
            "index must come from build_overlap_index(train_texts), got "
            f"{type(index).__name__}")


def longest_overlap(text: str, index: OverlapIndex) -> int:
    """Length in words of the longest run `text` shares with a training
    text (0 if none). Tokenised like `words`."""
    _check_index(index)
    return index.longest(text)


def flag_copies(generations: Sequence[str], index: OverlapIndex,
                threshold: int = 12) -> list[bool]:
    """True for each generation sharing >= `threshold` consecutive words
    with some training text, i.e. a likely verbatim copy."""
    _check_index(index)
    if isinstance(generations, str):
        raise LorabookError("generations must be a list of strings")
    if threshold < 1:
        raise LorabookError(f"threshold must be >= 1 word, got {threshold}")
    return [index.longest(g) >= threshold for g in generations]


# --- echo, voice and anachronism: checks a reader of the outputs makes ----

_WE = {"we", "our", "us", "ours", "ourselves"}


def says_we(text: str) -> bool:
    """Does the text speak as "we" ("we", "our", "us", "ours", "ourselves")?"""
    return bool(_WE & set(words(text)))


def first_person_plural_rate(texts: Sequence[str]) -> float:
    """Share of texts that use "we", "our", "us", "ours" or "ourselves"."""
    _check_texts(texts)
    return float(np.mean([says_we(t) for t in texts]))


# Phrases of an assistant talking about the task instead of doing it ("The
# speech is a fitting tribute ...", "Here's the next passage ..."). A
# heuristic: its rate on the real passages shows how often it misfires.
META_PHRASES = ("the speech", "this speech", "the passage", "this passage",
                "here is", "heres", "the address", "this address", "sure",
                "certainly", "the original sentence", "as an ai")


def meta_rate(texts: Sequence[str]) -> float:
    """Share of texts that contain one of META_PHRASES (word-tokenised)."""
    _check_texts(texts)
    return float(np.mean([any(f" {m} " in f" {' '.join(words(t))} "
                              for m in META_PHRASES) for t in texts]))


def loop_rate(texts: Sequence[str], threshold: float = 0.2, n: int = 3) -> float:
    """Share of texts whose repeated n-gram rate is above `threshold`."""
    _check_texts(texts)
    return float(np.mean([repeated_ngram_rate(t, n) > threshold
                          for t in texts]))



def echo_length(generation: str, prompt: str) -> int:
    """Longest run of words a generation repeats from its own prompt."""
    if not generation or not prompt:
        return 0
    return OverlapIndex([prompt]).longest(generation)


# Words for things that did not exist (under that name) before a year; a
# passage for an earlier year that uses one is anachronistic. A short,
# checkable list, not a knowledge base: it finds some slips, never all.
ANACHRONISMS = {
    "soviet": 1917, "communism": 1848, "nuclear": 1945, "atomic bomb": 1945,
    "united nations": 1942, "world war": 1914, "airplane": 1903,
    "aircraft": 1903, "automobile": 1890, "television": 1927, "radio": 1900,
    "computer": 1945, "internet": 1983, "telephone": 1876,
    "railroad": 1827, "telegraph": 1837, "social security": 1935,
    "medicare": 1965, "terrorism": 1795, "climate change": 1975,
    "artificial intelligence": 1956, "covid": 2019, "astronaut": 1959,
}


def anachronisms(text: str, year: int | None,
                 lexicon: dict[str, int] = ANACHRONISMS) -> list[str]:
    """Terms of `lexicon` that `text` uses before their first year."""
    if year is None or not text:
        return []
    padded = " " + " ".join(words(text)) + " "
    return sorted(t for t, first in lexicon.items()
                  if int(year) < first and f" {t}" in padded)


# --- everything chapter 5 tabulates ---------------------------------------

def summarize_generations(generations: Sequence[str],
                          references: Sequence[str],
                          train_index: OverlapIndex,
                          copy_threshold: int = 12,
                          prompts: Sequence[str] | None = None,
                          years: Sequence[int | None] | None = None,
                          echo_words: int = 6) -> dict:
    """All the text metrics for one set of generations, as a flat dict.

    With `prompts`, also the share of generations that repeat `echo_words`
    or more words of their own prompt; with `years`, the share that use a
    term before its time (`anachronisms`).
    """
    _check_pair(generations, references)
    _check_index(train_index)
    overlaps = [train_index.longest(g) for g in generations]
    out = {
        "rouge_l": rouge_l(generations, references),
        "bleu": bleu(generations, references),
        "distinct_1": distinct_n(generations, 1),
        "distinct_2": distinct_n(generations, 2),
        "repeated_3gram_rate": mean_repeated_ngram_rate(generations, 3),
        "loop_rate": loop_rate(generations),
        "mean_words": mean_length_words(generations),
        "we_rate": first_person_plural_rate(generations),
        "meta_rate": meta_rate(generations),
        "max_overlap": int(max(overlaps)),
        "copies": int(sum(o >= copy_threshold for o in overlaps)),
    }
    if prompts is not None:
        _check_pair(generations, prompts)
        out["echo_rate"] = float(np.mean(
            [echo_length(g, (p or "").split("\n", 1)[-1]) >= echo_words
             for g, p in zip(generations, prompts)]))
    if years is not None:
        _check_pair(generations, list(years))
        out["anachronism_rate"] = float(np.mean(
            [bool(anachronisms(g, y)) for g, y in zip(generations, years)]))
    return out
