"""Every input the command line takes is checked before any work: a one-line error, no stack trace,
nothing written. Also: the registries are the CLI's choices, the toy model's defaults, the output
rules (assets/ and committed files are never overwritten unless asked), and torch's threads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.cli import MARKER, build_parser, ensure_writable, main, physical_cores, set_threads, toyworld_train_paths
from studio.paths import ASSETS


def fails_cleanly(capsys, argv, message, out=None):
    """`studio ARGV` exits with 2, a message that contains `message`, no traceback, and leaves `out` unwritten."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err, err
    if out is not None:
        assert not Path(out).exists()
    return err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["--steps", "-5"], "argument --steps: must be at least 1, got -5"),
        (["--steps", "2.5"], "argument --steps: expected a whole number, got '2.5'"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["--seeds", "0"], "argument --seeds: must be at least 1"),
        (["--guidance", "nan"], "argument --guidance: must be a finite number"),
        (["--guidance", "inf"], "argument --guidance: must be a finite number"),
        (["--height", "0"], "argument --height: must be at least 1"),
        ([], "give at least one --prompt"),
    ],
)
def test_generate_refuses_bad_numbers_before_loading_a_model(capsys, tmp_path, args, message):
    out = tmp_path / "gen"
    prompt = ["--prompt", "a red triangle"] if args else []
    fails_cleanly(capsys, ["generate", *prompt, *args, "--out", str(out)], message, out)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["erase", "--concept", "a triangle", "--set", "lr=abc"], "lr='abc' is not a finite number"),
        (["erase", "--concept", "a triangle", "--set", "iterations=1.5"], "iterations=1.5 is not a whole number"),
        (["erase", "--concept", "a triangle", "--set", "iterations=abc"], "iterations='abc' is not a whole number"),
        (["erase", "--concept", "a triangle", "--method", "advunlearn", "--set", "reuse_targets=no"], "is not true or false"),
        (["erase", "--concept", "a triangle", "--set", "learning_rate=1"], "has no setting learning_rate"),
        (["erase", "--concept", "a triangle", "--set", "lr"], "--set expects KEY=VALUE"),
        (["erase", "--concept", "nudity", "--eval"], "'nudity'] names no toy-world concept"),
        (["erase", "--concept", "a triangle", "--attack-prompts", "0"], "argument --attack-prompts: must be at least 1"),
        (["erase", "--concept", "a triangle", "--method", "esd-z"], "argument --method: invalid choice: 'esd-z'"),
        (
            ["attack", "--prompt", "a triangle", "--concept", "triangle", "--set", "iterations=abc"],
            "iterations='abc' is not a whole number",
        ),
        (["attack", "--prompt", "a triangle", "--concept", "hexagon"], "'hexagon' names no toy-world concept"),
        (["attack", "--prompt", "a triangle", "--concept", "triangle", "--attack", "gcg"], "argument --attack: invalid choice: 'gcg'"),
        (["eval", "--erased", "x", "--concept", "triangle", "--attack-set", "iterations=1.5"], "iterations=1.5 is not a whole number"),
        (["eval", "--erased", "x", "--concept", "triangle", "--seeds", "0"], "argument --seeds: must be at least 1"),
        (["eval", "--erased", "x", "--concept", "triangle", "--judge", "clip"], "argument --judge: invalid choice: 'clip'"),
        (["demo", "--concept", "hexagon"], "'hexagon' names no toy-world concept"),
    ],
)
def test_erase_attack_eval_check_settings_before_any_work(capsys, tmp_path, argv, message):
    out = tmp_path / "out"
    fails_cleanly(capsys, [*argv, "--out", str(out)], message, out)


def test_outputs_are_checked_before_any_work(capsys, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for argv in (
        ["generate", "--prompt", "a red triangle"],
        ["erase", "--concept", "a triangle"],
        ["attack", "--prompt", "a red triangle", "--concept", "triangle"],
    ):
        fails_cleanly(capsys, [*argv, "--out", str(a_file / "out")], "is a file, not a folder")
    assert a_file.read_text() == "not a folder"
    with pytest.raises(ValueError, match="is a file, not a folder"):
        ensure_writable(a_file / "deeper" / "still")
    # a read-only place: a 0o500 folder for an ordinary user; /sys for root, whom permission bits do not stop
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    target = read_only if os.geteuid() != 0 else Path("/sys")
    if not os.access(target, os.W_OK) or target == Path("/sys"):
        fails_cleanly(capsys, ["generate", "--prompt", "a red triangle", "--out", str(target / "out")], "is not writable")
    # an existing folder of the user's is not written into
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    fails_cleanly(capsys, ["erase", "--concept", "a triangle", "--out", str(theirs)], "already holds files the studio did not write")
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]


def test_choices_come_from_the_registries():
    from erasers import METHODS, PRESETS
    from erasers.attacks import ATTACKS
    from studio.judges import JUDGES

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    options = {name: {a.dest: a for a in p._actions} for name, p in sub.items()}
    assert list(options["erase"]["method"].choices) == list(METHODS) == list(options["demo"]["method"].choices)
    assert list(options["erase"]["preset"].choices) == list(PRESETS)
    for cmd in ("erase", "eval", "attack"):
        assert list(options[cmd]["attack"].choices) == list(ATTACKS)
        assert list(options[cmd]["judge"].choices) == list(JUDGES)


def test_every_option_has_help_text():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    missing = []
    for name, parser in sub.items():
        groups = [parser]
        nested = [a for a in parser._actions if a.dest == "toy_command"]
        if nested:
            groups = list(nested[0].choices.values())
        for p in groups:
            missing += [f"{p.prog} {a.option_strings[0]}" for a in p._actions if a.option_strings and not a.help]
    assert not missing, missing


def test_help_imports_no_torch():
    code = "import sys; from studio.cli import build_parser; build_parser().format_help(); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr


def test_toy_model_defaults_to_the_toy_preset_and_budget():
    from erasers import EVAL_BUDGETS, eval_config
    from erasers.cli import is_toy

    args = build_parser().parse_args(["erase", "--concept", "a triangle", "--eval"])
    assert args.preset is None and is_toy(args.model)  # cmd_erase picks "toy" for the toy model
    assert not is_toy("CompVis/stable-diffusion-v1-4")
    toy, note = eval_config("unlearndiffatk", "toy")
    official, _ = eval_config("unlearndiffatk", "official")
    assert toy.attack_overrides == EVAL_BUDGETS["toy"]["attack_overrides"] and "toy budget" in note
    assert official.attack_overrides == {} and official.attack_prompts > toy.attack_prompts


def test_prompts_are_judged_as_the_app_judges_them():
    from erasers.cli import toy_name
    from studio.toyworld.grammar import find_concept

    for prompt in ("a wedge", "a red triangle", "a plus sign", "a crimson shape", ["a wedge", "a star"]):
        assert toy_name(prompt) == find_concept(prompt)
    assert toy_name("a wedge") == "triangle"


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(Path(folder).rglob("*"))}


def test_toyworld_train_writes_into_assets_only_with_install(capsys, tmp_path):
    before = _mtimes(ASSETS)
    parse = build_parser().parse_args
    work, out = toyworld_train_paths(parse(["toyworld", "train", "--quick", "--work", str(tmp_path / "w")]))
    assert (work, out) == (tmp_path / "w", tmp_path / "w" / "export")
    work, out = toyworld_train_paths(parse(["toyworld", "train", "--quick"]))
    assert work == Path("runs/toyworld-quick") and out == work / "export"  # never the real run's checkpoints
    assert toyworld_train_paths(parse(["toyworld", "train", "--install"]))[1] == ASSETS
    fails_cleanly(capsys, ["toyworld", "train", "--quick", "--install", "--work", str(tmp_path / "w2")], "never installed into assets/")
    fails_cleanly(capsys, ["toyworld", "train", "--out", str(ASSETS / "toy-model"), "--work", str(tmp_path / "w3")], "pass --install")
    assert not (tmp_path / "w2").exists() and not (tmp_path / "w3").exists()
    assert _mtimes(ASSETS) == before


def test_toyworld_report_never_overwrites_files_it_did_not_write(capsys, tmp_path, monkeypatch):
    args = build_parser().parse_args(["toyworld", "report"])
    assert Path(args.out) == Path("outputs/toyworld-report")  # not benchmarks/results, relative to wherever it runs
    committed = tmp_path / "results"
    committed.mkdir()
    (committed / "toyworld_report.json").write_text("{}")
    fails_cleanly(capsys, ["toyworld", "report", "--out", str(committed)], "pass --overwrite")
    assert (committed / "toyworld_report.json").read_text() == "{}"
    fails_cleanly(capsys, ["toyworld", "report", "--out", str(ASSETS)], "inside the shipped assets/")

    # the studio's own report folder is replaced freely; --overwrite replaces others' files
    import studio.toyworld.report as report

    def fake_main(a):
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "toyworld_report.json").write_text('{"new": 1}')
        return 0

    monkeypatch.setattr(report, "main", fake_main)
    mine = tmp_path / "mine"
    assert main(["toyworld", "report", "--out", str(mine)]) == 0 and (mine / MARKER).is_file()
    assert main(["toyworld", "report", "--out", str(mine)]) == 0
    assert main(["toyworld", "report", "--out", str(committed), "--overwrite"]) == 0
    assert (committed / "toyworld_report.json").read_text() == '{"new": 1}' and not (committed / MARKER).exists()


def test_threads_default_to_the_physical_cores(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert 1 <= physical_cores() <= (os.cpu_count() or 1)
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(None) is None  # an explicit OMP_NUM_THREADS is the user's choice
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert set_threads(None) == physical_cores() == torch.get_num_threads()
        assert build_parser().parse_args(["generate", "--threads", "3"]).threads == 3
    finally:
        torch.set_num_threads(before)
