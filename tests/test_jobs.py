"""Batch erasure from TOML job files: resume, validation with the file and line, and the folder rules
(names stay inside the output root, nothing of the user's is written into or deleted)."""

import threading

import pytest
import torch

from erasers import Concept, erase
from erasers.jobs import JobFileError, erase_batch, parse_job, restart
from studio.cli import MARKER, main
from studio.loading import load_pipeline, load_text_encoder
from studio.sampling import Cancelled

from conftest import build_tiny_pipe


JOB = """model = "{model}"
out = "{out}"

[[concept]]
name = "tri"
prompts = ["a triangle"]
method = "esd-x"
config = {{ iterations = 4, num_inference_steps = 6, lr = 1e-3, checkpoint_every = 2 }}

[[concept]]
name = "star"
prompts = ["a star"]
method = "advunlearn"
export = true
config = {{ iterations = 4, warmup_iterations = 1, num_inference_steps = 6, lr = 1e-3, retain_set = "toy", retain_batch = 2, checkpoint_every = 2 }}
"""


def test_batch_resumes_without_redoing_finished_concepts(tmp_path):
    build_tiny_pipe().save_pretrained(tmp_path / "base")
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(model=tmp_path / "base", out=tmp_path / "out"))
    settings, entries = parse_job(job)
    cancel = threading.Event()
    kill_star = lambda info: cancel.set() if info["concept"] == "star" and info["step"] == 2 else None  # noqa: E731
    with pytest.raises(Cancelled):
        erase_batch(entries, settings["out"], settings["model"], callback=kill_star, cancel=cancel, progress=False)
    tri_done = (tmp_path / "out" / "tri" / "done.json").stat().st_mtime_ns
    summary = erase_batch(entries, settings["out"], settings["model"], progress=False)
    assert [s["status"] for s in summary] == ["skipped", "done"]
    assert (tmp_path / "out" / "tri" / "done.json").stat().st_mtime_ns == tri_done  # not redone
    assert summary[1]["stats"]["resumed_from"] == 2
    assert (tmp_path / "out" / "star" / "plugin" / "model.safetensors").is_file()
    straight = erase(
        load_pipeline(tmp_path / "base", device="cpu"), Concept("a star"), "advunlearn", config=entries[1].config, progress=False
    )
    resumed = load_text_encoder(tmp_path / "out" / "star" / "model" / "text_encoder")
    params = dict(resumed.named_parameters())
    assert all(torch.equal(w, params[n]) for n, w in straight.weights.items())
    assert (tmp_path / "out" / "tri" / MARKER).is_file()  # the folders are marked as the studio's own


@pytest.mark.parametrize(
    "text, line, message",
    [
        ('[[concept]]\nprompts = ["a triangle"]\nmethod = "esd-z"\n', 3, "unknown method 'esd-z'"),
        ('[[concept]]\nprompts = ["a triangle"]\n\n[[concept]]\nprompts = []\n', 5, "at least one non-empty prompt"),
        ('[[concept]]\nprompts = ["a triangle"]\nconfig = { learning_rate = 1 }\n', 3, "has no setting learning_rate"),
        ('[[concept]]\nprompts = ["a triangle"]\ncolour = "red"\n', 3, "unknown key 'colour'"),
        ('[[concept]\nprompts = ["a triangle"]\n', 1, "not valid TOML"),
    ],
)
def test_bad_job_files_name_the_line(tmp_path, text, line, message):
    job = tmp_path / "job.toml"
    job.write_text(text)
    with pytest.raises(JobFileError, match=message) as err:
        parse_job(job)
    assert f"line {line}" in str(err.value)


@pytest.mark.parametrize(
    "text, line, message",
    [
        ('evaluate = "false"\n[[concept]]\nprompts = ["a triangle"]\n', 1, "evaluate must be true or false"),
        ('[[concept]]\nprompts = ["a triangle"]\nexport = "no"\n', 3, "export must be true or false"),
        ('model = 42\n[[concept]]\nprompts = ["a triangle"]\n', 1, "model must be a string"),
        ('[[concept]]\nprompts = ["a triangle"]\nmodel = 42\n', 3, "model must be a string"),
        ('out = ["a", "b"]\n[[concept]]\nprompts = ["a triangle"]\n', 1, "out must be a string"),
        ('[[concept]]\nprompts = ["a triangle"]\nanchors = ["a square", 3]\n', 3, "anchors must be a list of non-empty prompts"),
        ("[[concept]]\nprompts = 7\n", 2, "at least one non-empty prompt"),
        ('[[concept]]\nprompts = ["a triangle"]\nconfig = { lr = "abc" }\n', 3, "lr='abc' is not a finite number"),
        ('[[concept]]\nprompts = ["a triangle"]\nconfig = { iterations = 1.5 }\n', 3, "iterations=1.5 is not a whole number"),
        ('[[concept]]\nprompts = ["a triangle"]\nmethod = "advunlearn"\nconfig = { reuse_targets = "no" }\n', 4, "is not true or false"),
        ('[[concept]]\nname = ".."\nprompts = ["a triangle"]\n', 2, "no letter or digit"),
        ('[[concept]]\nname = "Tri"\nprompts = ["a triangle"]\n[[concept]]\nname = "tri"\nprompts = ["a star"]\n', 5, "two concepts"),
        ('evaluate = true\n[[concept]]\nprompts = ["nudity"]\n', 3, "names none"),
    ],
)
def test_job_values_of_the_wrong_type_name_the_line(tmp_path, text, line, message):
    job = tmp_path / "job.toml"
    job.write_text(text)
    with pytest.raises(JobFileError, match=message) as err:
        parse_job(job)
    assert f"line {line}" in str(err.value) and str(job) in str(err.value)


def test_job_values_are_read_as_written(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(
        'evaluate = false\n[[concept]]\nname = "../../Escape"\nprompts = "a triangle"\nanchors = "a square"\nexport = false\n'
        "config = { iterations = 3, lr = 1 }\n"
    )
    settings, [entry] = parse_job(job)
    assert settings["evaluate"] is False and entry.export is False
    assert entry.prompts == ["a triangle"] and entry.anchors == ["a square"]  # one string is one prompt, not characters
    assert entry.name == "escape"  # sanitised to a plain folder name inside the output root


def test_restart_never_deletes_outside_the_output_root_or_unmarked_folders(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    job = tmp_path / "job.toml"
    job.write_text(f'out = "{out}"\n[[concept]]\nname = ".."\nprompts = ["a triangle"]\n')
    assert main(["erase", "--job", str(job), "--restart"]) == 2
    assert outside.read_text() == "keep me" and out.is_dir()

    # a concept folder that the studio did not make is neither deleted nor written into
    mine = out / "tri"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    job.write_text(f'out = "{out}"\n[[concept]]\nname = "tri"\nprompts = ["a triangle"]\nconfig = {{ iterations = 1 }}\n')
    assert main(["erase", "--job", str(job), "--restart"]) == 2
    assert (mine / "notes.txt").read_text() == "mine"
    settings, entries = parse_job(job)
    with pytest.raises(ValueError, match="did not write"):
        erase_batch(entries, out, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    # a marked folder is the studio's own: --restart deletes it, and only it
    (mine / "notes.txt").unlink()
    (mine / MARKER).write_text("")
    (mine / "checkpoint").mkdir()
    assert restart(entries, out) == [mine]
    assert not mine.exists() and outside.read_text() == "keep me"
