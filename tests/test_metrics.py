"""Text metrics (lorabook.metrics) against hand-computed values."""
import random

import pytest

from lorabook import metrics as M
from lorabook.sotu import era as ERA
from lorabook.config import LorabookError


def test_words_lowercases_and_strips_punctuation():
    assert M.words("The Nation's  war—and PEACE!") == [
        "the", "nations", "war", "and", "peace"]
    assert M.words("") == []


def test_rouge_l_identical_and_disjoint():
    text = "the state of the union is strong"
    assert M.rouge_l([text], [text]) == pytest.approx(1.0)
    assert M.rouge_l(["alpha beta gamma"], ["delta epsilon"]) == 0.0
    # mean over samples: one perfect, one disjoint
    assert M.rouge_l([text, "alpha"], [text, "omega"]) == pytest.approx(0.5)


def test_rouge_l_hand_example():
    # LCS("a b c d", "a c d e") = "a c d": P = R = 3/4, F1 = 3/4
    assert M.rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(0.75)


def test_bleu_identical_is_100_and_empty_is_0():
    text = "we the people of the united states in order to form"
    assert M.bleu([text], [text]) == pytest.approx(100.0)
    assert M.bleu([""], [text]) == 0.0


def test_distinct_n_hand_example():
    assert M.distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert M.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # n-grams do not span texts: "a b" + "b a" -> {ab, ba}, 2 of 2
    assert M.distinct_n(["a b", "b a"], 2) == 1.0
    assert M.distinct_n(["", "x"], 2) == 0.0


def test_repeated_ngram_rate_hand_example():
    # 3-grams: abc bca cab abc bca -> the last two were seen: 2/5
    assert M.repeated_ngram_rate("a b c a b c a") == pytest.approx(0.4)
    assert M.repeated_ngram_rate("one two three four") == 0.0
    assert M.repeated_ngram_rate("") == 0.0
    assert M.mean_repeated_ngram_rate(
        ["a b c a b c a", "x y z"]) == pytest.approx(0.2)


def test_mean_length_words():
    assert M.mean_length_words(["one two, three.", ""]) == 1.5


def _random_texts(rng, n, length=50):
    vocab = [f"w{i}" for i in range(2000)]
    return [" ".join(rng.choice(vocab) for _ in range(length))
            for _ in range(n)]


def test_longest_overlap_finds_planted_copy():
    rng = random.Random(0)
    train = _random_texts(rng, 300)
    index = M.build_overlap_index(train)
    planted = " ".join(train[42].split()[5:20])            # 15 words
    generation = f"Fellow citizens, {planted}. Thank you."
    assert M.longest_overlap(generation, index) == 15
    match = index.match(generation)
    assert match.train_index == 42 and match.span == planted
    unrelated = "fellow citizens of the senate and house of representatives"
    assert M.longest_overlap(unrelated, index) <= 2
    assert M.longest_overlap("", index) == 0
    assert M.flag_copies([generation, unrelated, ""], index) == [
        True, False, False]


def test_longest_overlap_exact_at_every_length_and_within_one_text():
    index = M.build_overlap_index(["a b c d e", "c d e f g"])
    # "b c d e f" is in neither text as a whole; runs never cross texts
    assert M.longest_overlap("b c d e f", index) == 4
    assert M.longest_overlap("x c d y", index) == 2


def test_period_of():
    assert ERA.period_of(1790) == "1775\u20131799"
    assert ERA.period_of(1800) == "1800\u20131824"
    assert ERA.period_of(2024) == "2000\u20132024"


def test_era_classifier_learns_distinctive_vocabulary():
    rng = random.Random(0)
    eras = {1790: ["congress", "indian", "militia", "treaty", "tariff"],
            1860: ["rebellion", "slavery", "union", "emancipation", "war"],
            1950: ["atomic", "soviet", "defense", "communism", "nuclear"],
            2010: ["internet", "jobs", "terrorism", "climate", "health"]}
    common = ["the", "of", "and", "we", "our", "nation", "people", "must"]

    def sample(n_per_era):
        texts, years = [], []
        for year, vocab in eras.items():
            for _ in range(n_per_era):
                toks = [rng.choice(common) for _ in range(30)]
                toks += [rng.choice(vocab) for _ in range(4)]
                rng.shuffle(toks)
                texts.append(" ".join(toks))
                years.append(year + rng.randint(0, 9))
        return texts, years

    clf = ERA.train_era_classifier(*sample(30), period=50)
    assert ERA.era_accuracy(clf, *sample(10)) >= 0.9
    assert set(ERA.era_predict(clf, ["", "atomic soviet"])) <= {
        ERA.period_of(y, 50) for y in eras}
    # The default labels are the three eras of ERA_BOUNDS.
    eras3 = ERA.train_era_classifier(*sample(30))
    assert set(ERA.era_predict(eras3, ["atomic soviet", "militia tariff"])) \
        <= {"before 1861", "1861\u20131932", "1933 on"}
    assert ERA.era_balanced_accuracy(eras3, *sample(10)) >= 0.9


def test_era_of_bounds():
    assert ERA.era_of(1860) == "before 1861"
    assert ERA.era_of(1861) == "1861\u20131932"
    assert ERA.era_of(1932) == "1861\u20131932"
    assert ERA.era_of(1933) == ERA.era_of(2021) == "1933 on"
    assert ERA.era_of(1900, (1850,)) == "1850 on"


def test_balanced_accuracy_does_not_reward_the_majority():
    truth = ["a"] * 8 + ["b"] * 2
    always_a = ["a"] * 10
    assert ERA.majority_accuracy(truth) == 0.8
    assert ERA.balanced_accuracy(truth, always_a) == 0.5   # chance, 1 / 2
    # recall 6/8 on a and 1/2 on b
    pred = ["a"] * 6 + ["b"] * 2 + ["b", "a"]
    assert ERA.balanced_accuracy(truth, pred) == pytest.approx((6 / 8 + 1 / 2) / 2)


def test_era_classifier_needs_two_eras():
    with pytest.raises(LorabookError, match="at least 2 eras"):
        ERA.train_era_classifier(["a b", "a c", "a d"], [1801, 1810, 1820])


def test_echo_voice_loops_and_anachronisms():
    prompt = "The railroad is changing the commerce of every State."
    assert M.echo_length("Indeed the railroad is changing the commerce, "
                         "friends.", prompt) == 6
    assert M.echo_length("", prompt) == 0
    assert M.first_person_plural_rate(["We act.", "They act.", "ours"]) \
        == pytest.approx(2 / 3)
    assert M.loop_rate(["a b c a b c a b c", "a b c d e f"]) == 0.5
    assert M.anachronisms("a treaty with the Soviet Union", 1905) == ["soviet"]
    assert M.anachronisms("a treaty with the Soviet Union", 1950) == []
    assert M.anachronisms("the railroad and the telegraph", 1830) == [
        "telegraph"]
    assert M.anachronisms("anything", None) == []
    assert M.meta_rate(["The speech is a fitting tribute.",
                        "Here's the next passage:", "We act now."]) \
        == pytest.approx(2 / 3)


def test_summarize_generations_keys_and_values():
    index = M.build_overlap_index(["the union is strong and free"])
    out = M.summarize_generations(["the union is strong", ""],
                                  ["the union is strong", "x"], index)
    assert set(out) == {"rouge_l", "bleu", "distinct_1", "distinct_2",
                        "repeated_3gram_rate", "loop_rate", "mean_words",
                        "we_rate", "meta_rate", "max_overlap", "copies"}
    assert out["max_overlap"] == 4 and out["copies"] == 0
    assert out["rouge_l"] == pytest.approx(0.5)
    assert out["mean_words"] == 2.0
    more = M.summarize_generations(
        ["the union is strong and free", "a soviet plan"], ["x", "y"], index,
        prompts=["1800, A (B):\nThe union is strong and free.", "1800, A (B):\nz"],
        years=[1800, 1800])
    assert more["echo_rate"] == 0.5 and more["anachronism_rate"] == 0.5


@pytest.mark.parametrize("call", [
    lambda: M.rouge_l(["a", "b"], ["a"]),
    lambda: M.bleu(["a"], ["a", "b"]),
    lambda: ERA.era_accuracy(None, ["a"], [1800, 1900]),
    lambda: ERA.train_era_classifier(["a", "b"], [1800]),
    lambda: M.summarize_generations(["a"], [], M.build_overlap_index([])),
    lambda: M.rouge_l([], []),
    lambda: M.distinct_n(["a"], 0),
])
def test_bad_input_raises_lorabook_error(call):
    with pytest.raises(LorabookError):
        call()
