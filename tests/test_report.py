"""report.table: a Markdown table, with a numbered caption when asked."""
import pytest

from lorabook import report


def test_table_without_caption_is_a_plain_pipe_table():
    text = report.table([dict(split="train", samples=10)]).data
    assert text.splitlines()[0].startswith("| split")
    assert ":::" not in text


def test_caption_and_name_make_a_myst_table_directive():
    text = report.table([dict(split="train", samples=10)],
                        caption="Sizes of  the\nsplits.", name="tab-splits").data
    lines = text.splitlines()
    assert lines[:3] == [":::{table} Sizes of the splits.", ":name: tab-splits", ""]
    assert lines[3].startswith("| split") and lines[-1] == ":::"
    assert report.table([dict(a=1)], caption="A.").data.splitlines()[1] == ""


def test_a_name_needs_a_caption():
    with pytest.raises(ValueError):
        report.table([dict(a=1)], name="tab-a")
    with pytest.raises(ValueError):
        report.table([dict(a=1)], caption="  ")


def test_table_headers_are_words_not_identifiers():
    text = report.table([dict(stopped_at_EOS="50%", ci_95="1 - 2")]).data
    assert [c.strip() for c in text.splitlines()[0].split("|")[1:3]] == [
        "stopped at EOS", "ci 95"]


def test_table_code_columns_and_widths():
    text = report.table([dict(id="1846-polk-0082", n=3)], caption="Ids.",
                        code=("id",), widths=(30, 70)).data
    assert "`1846-polk-0082`" in text
    assert text.startswith("```{tabularcolumns} ") and r"\X{30}{100}" in text
    with pytest.raises(ValueError, match="one width per column"):
        report.table([dict(a=1, b=2)], caption="A.", widths=(100,))


def test_wrap_keeps_line_breaks_and_width():
    text = report.wrap("PROMPT:", "a " * 80 + "\nsecond line", width=30)
    lines = text.split("\n")
    assert lines[0].startswith("PROMPT: a a") and lines[-1] == "second line"
    assert max(len(l) for l in lines) <= 30


def test_long_table_may_break_across_pages():
    text = report.table([dict(a=1)], caption="A.", long=True).data
    assert ":class: longtable" in text.splitlines()[1:3]


def test_a_table_that_fits_a_page_is_kept_whole_and_a_taller_one_breaks():
    short = report.table([dict(rule=f"r{i}", n=i) for i in range(20)],
                         caption="Twenty one-line rows.").data
    assert "longtable" not in short
    # 14 rows whose text wraps to several lines in its 40% column: taller
    # than a page.
    tall = report.table([dict(a="x", b="word " * 60) for _ in range(14)],
                        caption="Tall.", widths=(60, 40)).data
    assert ":class: longtable" in tall.splitlines()


def test_table_lines_counts_wrapped_cells_and_the_caption():
    assert report.table_lines([["a", "b"], ["c", "d"]], None) == 3
    # a 220-character cell in a column of half of 110 characters: 5 lines
    assert report.table_lines([["h", "h"], ["x", "y" * 220]], None,
                              caption="c" * 111) == 1 + 5 + 2 + 1


def test_counts_get_thousands_separators_and_years_do_not():
    text = report.table([dict(passages=13400, year=1861, steps=96)]).data
    row = [c.strip() for c in text.splitlines()[2].split("|")[1:4]]
    assert row == ["13,400", "1861", "96"]
