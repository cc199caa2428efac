"""The pinned human reading: a reading is shown only for the exact text it
judges, and the computed checks on hand-made generations."""
import yaml

from lorabook.book import reading as R
from lorabook.book import sphinx_ext


def _entry(rec, system, text):
    return dict(id=rec["id"], system=system, sha256=R.text_hash(text),
                reading="Read and judged.",
                **{k: "yes" for k in R.CRITERIA})


def test_changed_generation_drops_its_stale_reading(tmp_path):
    rec = dict(id="1850-fillmore-0001", prompt="1850, X (Whig):\nOpening.",
               finetuned="We have done our duty.", base_instructed="He did.")
    path = tmp_path / "readings.yaml"
    path.write_text(yaml.safe_dump([_entry(rec, "finetuned", rec["finetuned"]),
                                    _entry(rec, "base_instructed",
                                           rec["base_instructed"])]))
    readings = R.load_readings(path)
    assert R.reading_for(rec, "finetuned", readings)["reading"] == "Read and judged."
    assert R.stale_warning([rec], readings).startswith("WARNING (lorabook): the overall")
    with_summary = readings + [dict(id=R.SUMMARY_ID, sha256=R.summary_hash([rec]),
                                    reading="All read.")]
    assert R.stale_warning([rec], with_summary) == ""
    assert R.summary_for([rec], with_summary) == "All read."
    assert R.summary_for([dict(rec, finetuned="x")], with_summary) is None
    changed = dict(rec, finetuned="We have done our duty!")   # one character
    assert R.reading_for(changed, "finetuned", readings) is None
    assert R.reading_for(changed, "base_instructed", readings) is not None
    warning = R.stale_warning([changed], readings)
    assert warning.startswith("WARNING (lorabook): 1 of the 2 shown")
    assert R.unread([changed], readings) == [("1850-fillmore-0001", "finetuned")]


def test_build_warns_about_a_stale_reading(tmp_path, monkeypatch):
    from lorabook import train as T
    run = tmp_path / "run"
    run.mkdir()
    rec = dict(id="a", prompt="p", finetuned="text one", base_instructed="two")
    (run / "generations.jsonl").write_text(__import__("json").dumps(rec) + "\n")
    monkeypatch.setattr(T, "run_dir", lambda cfg: run)
    (tmp_path / "book").mkdir()
    (tmp_path / R.READINGS_FILE).write_text(yaml.safe_dump(
        [_entry(rec, "finetuned", "text one"),
         _entry(rec, "base_instructed", "an older text")]))
    assert "1 of the 2" in sphinx_ext.reading_warning(tmp_path)
    current = [_entry(rec, "finetuned", "text one"),
               _entry(rec, "base_instructed", "two")]
    (tmp_path / R.READINGS_FILE).write_text(yaml.safe_dump(
        current + [dict(id=R.SUMMARY_ID, sha256=R.summary_hash([rec]),
                        reading="All read.")]))
    assert sphinx_ext.reading_warning(tmp_path) == ""


def test_computed_checks_on_hand_made_generations():
    third = R.computed_checks(
        "The President has made it clear that he will not sign the bill.",
        "1881, James A Garfield (Republican):\nThe reform of the civil "
        "service can no longer be put off.", 1881)
    assert third["voice"] == "third person"
    ours = R.computed_checks("We must reform our civil service now.",
                             "1881, X (R):\nThe reform of the civil service.",
                             1881)
    assert ours["voice"] == "we"
    assert ours["prompt words"] == ["civil", "reform", "service"]
    loop = R.computed_checks("the subject of the subject of the subject of "
                             "the subject of the report", "p", 1820)
    assert loop["repeats"] > 0.2
    old = R.computed_checks("We shall defend ourselves against the Soviet "
                            "threat and nuclear arms.", "p", 1841)
    assert "soviet" in old["before its time"] and "nuclear" in old["before its time"]
    assert R.computed_checks("Here is the next passage of the speech.", "p",
                             1900)["voice"] == "meta"


def test_verdicts_are_counted_per_system_and_a_bad_answer_is_refused(tmp_path):
    import pytest
    from lorabook.config import LorabookError
    recs = [dict(id=f"r{i}", prompt="p", finetuned=f"ft {i}",
                 base_instructed=f"base {i}") for i in range(3)]
    entries = []
    for i, r in enumerate(recs):
        e = _entry(r, "finetuned", r["finetuned"])
        e.update(coherent=["yes", "partly: circular", "no: garbled"][i],
                 repetition="none" if i else '"the the"')
        entries.append(e)
    entries.append(_entry(recs[0], "base_instructed", "an older text"))
    path = tmp_path / "readings.yaml"
    path.write_text(yaml.safe_dump(entries))
    counts = R.verdict_counts(recs, R.load_readings(path))
    assert counts["finetuned"]["n"] == 3
    assert counts["finetuned"]["coherent"] == {"yes": 1, "partly": 1, "no": 1}
    assert counts["finetuned"]["repetition"] == {"found": 1, "none": 2}
    assert counts["base_instructed"]["n"] == 0          # its reading is stale
    entries[1]["own_voice"] = "mostly"                  # not yes/partly/no
    path.write_text(yaml.safe_dump(entries))
    with pytest.raises(LorabookError, match="own_voice.*yes, partly, no"):
        R.load_readings(path)


def test_shipped_readings_load():
    from pathlib import Path
    entries = R.load_readings(Path(__file__).parents[1] / R.READINGS_FILE)
    assert sum(e["id"] != R.SUMMARY_ID for e in entries) == 18
