"""The era/voice comparisons and the contamination measures on hand-made
inputs whose answers are known."""
import pytest

from lorabook import memorization as Mem
from lorabook.config import LorabookError
from lorabook.sotu import era as E


def test_stratified_by_era_draws_evenly_and_keeps_order():
    samples = [dict(id=i, year=y) for i, y in enumerate(
        [1800] * 50 + [1900] * 10 + [2000] * 200)]
    got = E.stratified_by_era(samples, 20, seed=1)
    eras = [E.era_of(s["year"]) for s in got]
    assert eras.count("before 1861") == 20
    assert eras.count("1861\u20131932") == 10       # all of a short era
    assert eras.count("1933 on") == 20
    assert [s["id"] for s in got] == sorted(s["id"] for s in got)
    assert got == E.stratified_by_era(samples, 20, seed=1)
    assert got != E.stratified_by_era(samples, 20, seed=2)
    with pytest.raises(LorabookError):
        E.stratified_by_era(samples, 0, seed=1)


def test_paired_era_difference_sign_and_interval():
    truth = ["a"] * 30 + ["b"] * 30
    right = list(truth)
    wrong = ["b"] * 30 + ["a"] * 30
    d = E.paired_era_difference(truth, right, wrong, n_boot=200)
    assert d["a"] == 1.0 and d["b"] == 0.0 and d["ci_low"] > 0
    d = E.paired_era_difference(truth, wrong, right, n_boot=200)
    assert d["difference"] == -1.0 and d["ci_high"] < 0
    # Equal systems: the interval holds zero.
    half = ["a"] * 15 + ["b"] * 15 + ["a"] * 15 + ["b"] * 15
    d = E.paired_era_difference(truth, half, half, n_boot=200)
    assert d["ci_low"] <= 0 <= d["ci_high"]


def test_paired_share_gap_rewards_the_closer_system():
    truth = ["a"] * 40
    real = [True] * 20 + [False] * 20          # 50%
    close = [True] * 19 + [False] * 21         # 47.5%
    far = [True] * 4 + [False] * 36            # 10%
    g = E.paired_share_gap(real, close, far, truth, n_boot=300)
    assert g["gap"] == pytest.approx(0.4 - 0.025)
    assert g["ci_low"] > 0
    g = E.paired_share_gap(real, far, close, truth, n_boot=300)
    assert g["ci_high"] < 0
    with pytest.raises(LorabookError):
        E.paired_share_gap(real, close[:-1], far, truth)


def test_prefix_match_and_longest_run():
    ref = "The progress of public credit is witnessed by a rise of stock"
    assert Mem.prefix_match("The progress of public credit was slow", ref) == 5
    assert Mem.prefix_match("Our progress of public credit", ref) == 0
    assert Mem.longest_shared_run("we saw that public credit is witnessed "
                                  "today", ref) == 4
    assert Mem.longest_shared_run("", ref) == 0
    # Punctuation and case do not break a match.
    assert Mem.prefix_match("the progress, of PUBLIC credit", ref) == 5
