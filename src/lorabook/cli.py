"""Command line: `lorabook data|new|train|evaluate|export|prepare-model|submission`.

Each subcommand calls the same library function the book calls. Mistakes a
user can make are printed as `error: ...` with exit status 2, no traceback.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from lorabook.config import LorabookError, load_config


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of config fields")
    p.add_argument("--preset", choices=["default", "tiny", "full"],
                   help="named preset (default: $LORABOOK_PRESET or default)")
    p.add_argument("--data", dest="data_path", help="dataset path")
    p.add_argument("--model", dest="model_name",
                   help="base model: hub id, local path, or the bundled one")
    p.add_argument("--output-dir", help="run directory")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any config field, e.g. --set epochs=3 --set "
                        "speed_layer=false (values read as YAML); repeatable")


def _set_values(pairs: list[str]) -> dict:
    """`--set field=value` pairs as config overrides; values are YAML
    scalars (3, 5e-4, true, null, [q_proj, v_proj])."""
    import yaml
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise LorabookError(f"--set expects FIELD=VALUE, got {pair!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise LorabookError(f"--set {pair!r}: not a YAML value: {e}") from None
        if isinstance(value, str) and re.fullmatch(
                r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value):
            value = float(value)       # YAML reads 5e-4 (no dot) as a string
        values[key.strip()] = value
    return values


def _cfg(args):
    values = {k: getattr(args, k, None) for k in
              ("data_path", "model_name", "output_dir", "text_column",
               "prompt_column", "response_column", "group_column",
               "min_samples")}
    # Paths typed on the command line are the user's, relative to where
    # they stand; a config's own paths stay relative to the project.
    for k in ("data_path", "output_dir"):
        if values[k] is not None:
            values[k] = str(Path(values[k]).expanduser().absolute())
    cfg = load_config(args.preset, args.config,
                      _set_values(getattr(args, "set", [])), **values)
    if getattr(args, "group_column", None) == "none":   # random split
        cfg = cfg.replace(group_column=None)
    return cfg


def _run_config(args, run):
    """The config a finished run was trained with (its `config.json`), so
    that `--run DIR` evaluates or exports with the run's own settings
    (`group_column: null`, its data, columns and model). `--data` and
    `--model` may still point at files that moved; `--config` and
    `--preset` would describe another run and are refused."""
    import dataclasses

    from lorabook.config import Config
    if getattr(args, "config", None) or getattr(args, "preset", None):
        raise LorabookError("--run uses the run's own config.json; give "
                            "either --run or --config/--preset, not both")
    from lorabook.train import RUN_HASH_KEYS
    d = {k: v for k, v in run.config.items() if k not in RUN_HASH_KEYS}
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise LorabookError(f"{run.path / 'config.json'}: unknown config "
                            f"field(s): {', '.join(unknown)}")
    if isinstance(d.get("target_modules"), list):
        d["target_modules"] = tuple(d["target_modules"])
    for k in ("data_path", "model_name"):
        if getattr(args, k, None) is not None:
            d[k] = getattr(args, k)
    # --set may change what only the evaluation reads; a training field
    # would describe another run than the one in DIR.
    from lorabook.config import EVALUATION_FIELDS
    extra = _set_values(getattr(args, "set", None) or [])
    wrong = sorted(set(extra) - EVALUATION_FIELDS)
    if wrong:
        raise LorabookError(
            f"--run uses the run's own training settings; --set may change "
            f"only {', '.join(sorted(EVALUATION_FIELDS))}, not "
            f"{', '.join(wrong)}")
    d.update(extra)
    try:
        return Config(**d)
    except TypeError as e:
        raise LorabookError(f"{run.path / 'config.json'}: invalid "
                            f"configuration: {e}") from None


def _config_and_run(args):
    """(config, finished run) for `evaluate` and `export`: the run of
    `--run DIR` with its own config, else the run of the given config."""
    from lorabook import train as T
    if args.run:
        run = T.load_run(args.run)
        return _run_config(args, run), run
    cfg = _cfg(args)
    return cfg, T.load_run(T.run_dir(cfg))


def cmd_data(args) -> int:
    from lorabook import data as D
    from lorabook import model as M
    cfg = _cfg(args)
    samples = D.load_samples(
        args.path, text_column=cfg.text_column, prompt_column=cfg.prompt_column,
        response_column=cfg.response_column,
        group_column=None if args.group_column in (None, "none")
        else args.group_column,
        min_samples=cfg.min_samples)
    tok = None if args.no_tokens else M.load_tokenizer(cfg)
    stats = D.describe(samples, tok)
    print(f"{args.path}: {stats['count']} samples")
    for part in ("prompt", "response"):
        w = stats[f"{part}_words"]
        line = f"  {part:<8} words: mean {w['mean']:.1f}, median {w['median']:.0f}, min {w['min']}, max {w['max']}"
        if f"{part}_tokens" in stats:
            t = stats[f"{part}_tokens"]
            line += f" | tokens: mean {t['mean']:.1f}, max {t['max']}"
        print(line)
    print("preview:")
    for s in D.preview(samples, args.preview):
        print(f"  [{s['id']}] prompt:   {s['prompt'][:200]!r}")
        print(f"  {' ' * (len(str(s['id'])) + 2)} response: {s['response'][:200]!r}")
    return 0


def cmd_train(args) -> int:
    from lorabook import train as T
    cfg = _cfg(args)
    run = T.train(cfg, resume=args.resume, force=args.force)
    print(json.dumps(run.metrics, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from lorabook import evaluate as E
    cfg, run = _config_and_run(args)
    result = E.evaluate_run(cfg, run, force=args.force)
    print(json.dumps(result["summary"], indent=2))
    return 0


def cmd_export(args) -> int:
    from lorabook import train as T
    cfg, run = _config_and_run(args)
    out = T.export_merged(cfg, run, args.output)
    print(f"Merged model written to {out}")
    return 0


def cmd_prepare_model(args) -> int:
    from lorabook import model as M
    print(f"Base model ready in {M.convert_bundled_model()}")
    return 0


def cmd_submission(args) -> int:
    from lorabook.book.submission import make_submission
    pdf, zipf = make_submission(args.name)
    print(f"wrote {pdf.name} and {zipf.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorabook", description="8-bit LoRA fine-tuning, as a book.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="validate a dataset and print statistics")
    p.add_argument("path")
    _config_args(p)
    p.add_argument("--text-column")
    p.add_argument("--prompt-column")
    p.add_argument("--response-column")
    p.add_argument("--group-column")
    p.add_argument("--min-samples", type=int)
    p.add_argument("--preview", type=int, default=3)
    p.add_argument("--no-tokens", action="store_true",
                   help="skip token counts (no tokenizer needed)")
    p.set_defaults(func=cmd_data)

    from lorabook.book.scaffold import add_new_command
    add_new_command(sub)                  # lorabook new DIR --data PATH

    p = sub.add_parser("train", help="fine-tune with 8-bit LoRA")
    _config_args(p)
    p.add_argument("--group-column",
                   help="column grouping related samples ('none': random split)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="train again even if a finished run exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="perplexity, generations, metrics")
    _config_args(p)
    p.add_argument("--run", help="run directory (default: the config's)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="merge the adapter into a full model")
    _config_args(p)
    p.add_argument("--run", help="run directory (default: the config's)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("prepare-model",
                       help="convert the bundled GGUF base model once")
    p.set_defaults(func=cmd_prepare_model)
    p = sub.add_parser("submission", help="write the PDF and the ZIP to hand in")
    p.add_argument("--name", required=True, help="Lastname_Firstname")
    p.set_defaults(func=cmd_submission)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LorabookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; `lorabook train --resume` continues a run",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
