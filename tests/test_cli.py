"""The `studio` command line as a user runs it."""

import subprocess
import sys

from PIL import Image


def run(*args):
    return subprocess.run([sys.executable, "-m", "studio.cli", *args], capture_output=True, text=True, timeout=600)


def test_generate_writes_pngs_and_a_grid(tmp_path):
    res = run("generate", "--prompt", "a red triangle", "--prompt", "a blue star", "--seeds", "2", "--steps", "10", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 5 and "grid.png" in pngs
    assert Image.open(tmp_path / "grid.png").width > 2 * 128
    assert "grid" in res.stdout


def test_bad_input_gives_a_message_not_a_stack_trace(tmp_path):
    res = run("generate", "--prompt", "word " * 100, "--steps", "2", "--out", str(tmp_path))
    assert res.returncode == 2 and "CLIP takes at most 77" in res.stderr and "Traceback" not in res.stderr
    res = run("generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_help_lists_the_commands():
    res = run("--help")
    assert res.returncode == 0 and "generate" in res.stdout and "toyworld" in res.stdout


def test_generate_refuses_huge_sizes_unless_forced(tmp_path):
    res = run("generate", "--prompt", "a red triangle", "--height", "4096", "--width", "4096", "--out", str(tmp_path / "g"))
    assert res.returncode == 2 and "--force" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "g").exists()


def test_attack_saves_the_target_beside_the_attacked_image(tmp_path):
    from studio.cli import main

    out = tmp_path / "attack"
    assert (
        main(
            [
                "attack",
                "--prompt",
                "a red triangle",
                "--concept",
                "triangle",
                "--attack",
                "none",
                "--set",
                "num_inference_steps=5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    target, attacked = Image.open(out / "target.png"), Image.open(out / "attacked.png")
    assert target.size == attacked.size == (32, 32)
    assert (out / "attack.json").is_file()
