"""The dataset card: read with huggingface_hub's DatasetCard, checked
against the data, and a clear error or a starter card when it is missing."""
import pytest

from lorabook import card as C
from lorabook.config import REPO_ROOT, LorabookError


def test_the_shipped_card_reads_and_agrees_with_the_data():
    card = C.load_card(C.card_path(REPO_ROOT / "data" / "sotu_passages.jsonl"))
    assert card.path == REPO_ROOT / "data" / "README.md"
    assert card.name.startswith("State of the Union")
    assert "pddl" in card.fact("license") and card.fact("language") == "en"
    assert not card.placeholders()
    for title in ("Dataset Description", "Uses", "Citation",
                  "Bias, Risks, and Limitations"):
        assert card.section(title), title
    n = sum(1 for _ in open(REPO_ROOT / "data" / "sotu_passages.jsonl"))
    rows = {r["fact"]: r["value"] for r in card.facts(n)}
    assert rows["samples loaded"] == f"{n:,}, size category 10K<n<100K: as the card says"


def test_size_category_and_a_card_that_disagrees(tmp_path):
    assert [C.size_category(n) for n in (999, 1000, 16661, 10**6)] == [
        "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]
    p = C.write_starter_card(tmp_path / "README.md", "Letters: 1900s", 500)
    rows = {r["fact"]: r["value"] for r in C.load_card(p).facts(5000)}
    assert rows["samples loaded"].endswith("the card says n<1K")
    assert rows["name"] == "Letters: 1900s"


def test_a_starter_card_lists_its_placeholders_and_is_never_overwritten(tmp_path):
    p = C.write_starter_card(tmp_path / "README.md", "Recipes", 1200)
    card = C.load_card(p)
    assert "license" in card.placeholders()
    assert "Dataset Description" in card.placeholders()
    p.write_text(p.read_text().replace(
        C.PLACEHOLDER, "Filled in.").replace('license: "Filled in."',
                                             "license: cc-by-4.0"))
    assert C.load_card(p).placeholders() == []
    with pytest.raises(LorabookError, match="not overwriting"):
        C.write_starter_card(p, "Recipes", 1200)
    assert "Filled in." in p.read_text()            # nothing lost


def test_a_missing_or_broken_card_is_a_clear_error(tmp_path):
    with pytest.raises(LorabookError, match="no dataset card at"):
        C.load_card(tmp_path / "README.md")
    bad = tmp_path / "README.md"
    bad.write_text("---\nlicense: [unclosed\n---\n# x\n")
    with pytest.raises(LorabookError, match="not a valid dataset card"):
        C.load_card(bad)
    d = tmp_path / "saved"
    d.mkdir()
    assert C.card_path(d) == d / "README.md"          # a saved dataset dir


def test_the_build_warns_while_the_card_is_a_starter(tmp_path, monkeypatch):
    from lorabook import config
    from lorabook.book.sphinx_ext import card_warning
    assert card_warning() == ""                       # the shipped card
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "p", "response": "r"}\n')
    cfg = config.load_config("tiny", data_path=str(data))
    monkeypatch.setattr(config, "load_config", lambda *a, **k: cfg)
    assert "no dataset card" in card_warning()
    C.write_starter_card(tmp_path / "README.md", "Mine", 1)
    w = card_warning()
    assert "still holds placeholders" in w and "Dataset Description" in w
