import pytest

from lorabook import train as T
from lorabook.cli import main
from lorabook.config import LorabookError, load_config


def test_presets_and_overrides(tmp_path):
    cfg = load_config("tiny")
    assert cfg.preset == "tiny" and cfg.model_name == "tiny-random"
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 4\ntarget_modules: [q_proj]\n")
    cfg = load_config("default", f)
    assert cfg.epochs == 4 and cfg.target_modules == ("q_proj",)
    assert cfg.hash() != load_config("default").hash()


@pytest.mark.parametrize("bad", [
    dict(epochs=0), dict(lora_dropout=1.5), dict(learning_rate=-1),
    dict(batch_size=2.5), dict(padding="left"), dict(max_length=4),
    dict(pad_to_multiple_of=0)])
def test_invalid_hyperparameters_rejected(bad):
    with pytest.raises(LorabookError, match="invalid configuration"):
        load_config("tiny", **bad)


def test_config_file_errors(tmp_path):
    with pytest.raises(LorabookError, match="not found"):
        load_config("tiny", tmp_path / "missing.yaml")
    f = tmp_path / "c.yaml"
    f.write_text("epoch: 3\n")
    with pytest.raises(LorabookError, match="unknown config field"):
        load_config("tiny", f)


def test_cli_error_exit_code(capsys, tmp_path):
    code = main(["data", str(tmp_path / "nope.jsonl"), "--no-tokens"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_cli_data_prints_real_statistics(capsys, tmp_path, tokenizer):
    """The printed numbers are the data's: hand-counted words, and token
    counts of the responses as the tokenizer splits them."""
    import json
    rows = [("one two", "a"), ("one two three four", "a b c"),
            ("x", "a b c d e f g h")]
    f = tmp_path / "own.jsonl"
    f.write_text("".join(json.dumps(dict(prompt=p, response=r)) + "\n"
                         for p, r in rows))
    code = main(["data", str(f), "--preset", "tiny", "--group-column", "none",
                 "--min-samples", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"{f}: 3 samples" in out
    # prompts 2, 4, 1 words; responses 1, 3, 8 words
    assert "prompt   words: mean 2.3, median 2, min 1, max 4" in out
    assert "response words: mean 4.0, median 3, min 1, max 8" in out
    n = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for _, r in rows]
    assert f"tokens: mean {sum(n) / 3:.1f}, max {max(n)}" in out
    assert "prompt:   'one two'" in out and "response: 'a b c'" in out


@pytest.mark.parametrize("argv", [
    ["train"], ["evaluate"], ["export", "--output", "x"],
    ["data", "data/sotu_passages.jsonl", "--no-tokens"]])
@pytest.mark.parametrize("problem", ["missing", "invalid", "unknown"])
def test_every_subcommand_exits_2_on_config_errors(capsys, tmp_path, argv,
                                                    problem):
    f = tmp_path / "c.yaml"
    if problem != "missing":
        f.write_text("epochs: 0\n" if problem == "invalid" else "epoch: 3\n")
    assert main(argv + ["--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_run_commands_exit_2_without_a_finished_run(capsys, tmp_path):
    for argv in (["evaluate", "--run", str(tmp_path)],
                 ["export", "--run", str(tmp_path), "--output", "x"]):
        assert main(argv) == 2
        assert "no finished run" in capsys.readouterr().err
    assert main(["submission", "--name", "nobody"]) == 2
    assert "Lastname_Firstname" in capsys.readouterr().err


def test_python_m_lorabook_exits_2_with_an_error_line(tmp_path):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "lorabook", "train", "--config",
                        str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.startswith("error: config file not found")
    assert "Traceback" not in p.stderr


def test_ctrl_c_exits_130(capsys, monkeypatch):
    from lorabook import train as T

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(T, "train", interrupted)
    assert main(["train", "--preset", "tiny"]) == 130
    assert "--resume" in capsys.readouterr().err


def _fake_run(tmp_path, **changes):
    """A finished run's directory as `train` leaves it (no adapter needed):
    trained on one's own data with `group_column: null`."""
    import json
    cfg = load_config("tiny", output_dir=str(tmp_path / "mine"),
                      data_path=str(tmp_path / "my.jsonl"),
                      prompt_column="question", **changes).replace(
                          group_column=None)
    run = tmp_path / "mine"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(T.run_record(cfg)))
    (run / "metrics.json").write_text("{}")
    (run / "log_history.json").write_text("[]")
    return cfg, run


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_run_commands_use_the_runs_own_config(tmp_path, monkeypatch, capsys,
                                               command):
    """`--run DIR` evaluates and exports with the config the run was trained
    with (group_column null, its own data and columns), not the defaults."""
    from lorabook import evaluate as E
    from lorabook import train as T
    cfg, run = _fake_run(tmp_path, target_modules=("q_proj",))
    seen = []
    monkeypatch.setattr(E, "evaluate_run", lambda c, r, force=False: (
        seen.append((c, r)), {"summary": {}})[1])
    monkeypatch.setattr(T, "export_merged", lambda c, r, out: (
        seen.append((c, r)), out)[1])
    extra = ["--output", str(tmp_path / "merged")] if command == "export" else []
    assert main([command, "--run", str(run), *extra]) == 0
    (got, r), = seen
    assert r.path == run
    assert got == cfg and got.hash() == cfg.hash()
    assert got.group_column is None and got.prompt_column == "question"
    # A moved data file can be pointed at; another config cannot be mixed in.
    seen.clear()
    assert main([command, "--run", str(run), "--data", "elsewhere.jsonl", *extra]) == 0
    assert seen[0][0] == cfg.replace(data_path="elsewhere.jsonl")
    assert main([command, "--run", str(run), "--preset", "tiny", *extra]) == 2
    assert "either --run or --config" in capsys.readouterr().err
    # --set changes an evaluation setting of the run, never a training one.
    seen.clear()
    assert main([command, "--run", str(run), "--set", "n_metric_prompts=7",
                 *extra]) == 0
    assert seen[0][0] == cfg.replace(n_metric_prompts=7)
    seen.clear()
    assert main([command, "--run", str(run), "--set", "epochs=9", *extra]) == 2
    assert "not epochs" in capsys.readouterr().err and not seen


def test_run_config_reads_what_train_writes(tmp_path):
    """config.json as train() writes it (with both hashes) gives back the
    run's config."""
    import argparse
    import json
    from lorabook.cli import _run_config
    cfg = load_config("tiny", output_dir=str(tmp_path / "r"))
    run = T.Run(tmp_path, json.loads(json.dumps(T.run_record(cfg))), {}, [])
    got = _run_config(argparse.Namespace(config=None, preset=None), run)
    assert got == cfg


def test_cli_set_reaches_every_field_with_yaml_values(monkeypatch, capsys):
    """--set FIELD=VALUE sets any config field, null included; a malformed
    pair or an unknown field exits 2 with an error line."""
    import argparse

    from lorabook import cli
    seen = []
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.append(cli._cfg(args)) or 0)
    p = cli.build_parser()
    args = p.parse_args(["train", "--preset", "tiny", "--set", "epochs=5",
                         "--set", "n_train=null", "--set", "speed_layer=false",
                         "--set", "target_modules=[q_proj, k_proj]",
                         "--set", "learning_rate=3e-4"])
    cfg = cli._cfg(args)
    assert (cfg.epochs, cfg.n_train, cfg.speed_layer, cfg.learning_rate) == \
        (5, None, False, 3e-4)
    assert cfg.target_modules == ("q_proj", "k_proj")
    assert cfg.lora_r == load_config("tiny").lora_r      # the rest untouched
    for bad, word in ((["--set", "epochs"], "FIELD=VALUE"),
                      (["--set", "no_such_field=1"], "no_such_field"),
                      (["--set", "epochs=two"], "epochs")):
        assert main(["train", "--preset", "tiny", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and word in err, err
    assert isinstance(p, argparse.ArgumentParser) and not seen


def test_data_edited_in_place_is_a_new_run(tmp_path):
    """The data file's contents, not only its path, decide whether a
    finished run (and its evaluation) is reused."""
    import os
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    cfg = load_config("tiny", data_path=str(data),
                      output_dir=str(tmp_path / "run"))
    out = T.run_dir(cfg)
    out.mkdir()
    T.write_json(out / "config.json", T.run_record(cfg))
    for name in ("metrics.json", "log_history.json"):
        T.write_json(out / name, {} if name == "metrics.json" else [])
    assert T.finished_run(cfg) is not None
    before = (cfg.hash(), cfg.train_hash())
    stat = data.stat()
    data.write_text('{"prompt": "a", "response": "c"}\n')   # same size
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert cfg.hash() != before[0] and cfg.train_hash() != before[1]
    assert T.finished_run(cfg) is None


def test_a_datasets_directory_edited_in_place_is_new_data(tmp_path):
    """A saved datasets directory is hashed file by file: any file's bytes
    or name change the digest; nothing else does."""
    import os

    from lorabook.config import data_digest
    d = tmp_path / "ds"
    (d / "sub").mkdir(parents=True)
    (d / "data-00000.arrow").write_bytes(b"abc")
    (d / "sub" / "state.json").write_text("{}")
    first = data_digest(d)
    assert first not in ("missing", data_digest(tmp_path / "nothing"))
    assert data_digest(d) == first
    st = (d / "data-00000.arrow").stat()
    (d / "data-00000.arrow").write_bytes(b"abd")
    os.utime(d / "data-00000.arrow", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    second = data_digest(d)
    assert second != first
    (d / "sub" / "state.json").rename(d / "sub" / "other.json")
    assert data_digest(d) not in (first, second)
    assert data_digest(tmp_path / "nothing") == "missing"


def test_group_column_auto_is_address_only_for_the_shipped_corpus(tmp_path):
    from lorabook.config import Config
    assert load_config().group_column == "address"
    assert Config(data_path="data/../data/sotu_passages.jsonl").group_column == "address"
    mine = tmp_path / "mine.jsonl"
    assert load_config(data_path=str(mine)).group_column is None
    assert load_config(data_path=str(mine), group_column="speaker").group_column == "speaker"
    assert load_config(fields=dict(group_column=None)).group_column is None


def test_command_line_paths_are_relative_to_the_working_directory(
        tmp_path, monkeypatch):
    import argparse

    from lorabook import cli
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(preset="tiny", config=None, set=[],
                              data_path="mine.jsonl", output_dir="runs/x",
                              model_name=None, text_column=None,
                              prompt_column=None, response_column=None,
                              group_column=None, min_samples=None)
    cfg = cli._cfg(args)
    assert cfg.resolve(cfg.data_path) == tmp_path / "mine.jsonl"
    assert cfg.resolve(cfg.output_dir) == tmp_path / "runs" / "x"


def test_a_project_directory_has_its_own_config_and_paths(tmp_path, monkeypatch):
    """A directory with lorabook.yaml is a project: from it or any folder
    below it (a chapter runs in book/), load_config reads that file and
    relative paths resolve against the project, not this checkout."""
    from lorabook.config import REPO_ROOT, project_root
    proj = tmp_path / "letters"
    (proj / "book").mkdir(parents=True)
    (proj / "lorabook.yaml").write_text(
        "data_path: data/letters.jsonl\nmin_samples: 10\noutput_dir: runs/letters\n")
    monkeypatch.chdir(proj / "book")
    assert project_root() == proj
    cfg = load_config("tiny")
    assert cfg.min_samples == 10 and cfg.group_column is None
    assert cfg.resolve(cfg.data_path) == proj / "data" / "letters.jsonl"
    assert cfg.resolve(cfg.output_dir) == proj / "runs" / "letters"
    monkeypatch.chdir(tmp_path)                   # outside: this checkout
    assert project_root() == REPO_ROOT
    assert load_config("tiny").resolve("data") == REPO_ROOT / "data"
