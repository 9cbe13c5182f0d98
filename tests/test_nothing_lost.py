"""Issue 10 at the library level: nothing of the user's is deleted, a killed run resumes, bad input is
refused before any work, and the noise goes: save refuses foreign folders, TrainLoop checkpoints by
time and on SIGINT, tiny images warn, empty source prompts fail, erased models load without warnings,
and the evaluation reports progress per prompt and per attack step."""

import os
import signal
import threading
import warnings

import numpy as np
import pytest
import torch

from erasers import Concept, erase
from erasers.base import ErasureResult, Interrupted, TrainLoop, replaceable
from studio.checkpoint import load_checkpoint
from studio.paths import MARKER
from studio.progress import is_event

from conftest import build_tiny_pipe


TINY = dict(iterations=6, num_inference_steps=8, lr=1e-3, checkpoint_every=100)


def _result(pipe):
    weights = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if ".attn2.to_k" in n}
    return ErasureResult("esd-x", Concept("a triangle"), {}, "unet", weights)


# ---------------------------------------------------------------- ErasureResult.save


@pytest.mark.parametrize("where", ["folder", "tmp"])
def test_save_never_deletes_a_folder_it_did_not_write(tiny_pipe, tmp_path, where):
    folder = tmp_path / "other-model"
    user = folder if where == "folder" else tmp_path / "other-model.tmp"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files the studio did not write; nothing was changed"):
        _result(tiny_pipe).save(folder, tiny_pipe)
    assert (user / "notes.txt").read_text() == "mine" and sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert where == "folder" or not folder.exists()


def test_save_replaces_its_own_folder_and_empty_ones(tiny_pipe, tmp_path):
    from studio.loading import load_pipeline

    empty = tmp_path / "empty"
    empty.mkdir()
    out = _result(tiny_pipe).save(empty, tiny_pipe)
    assert (out / MARKER).is_file() and (out / "erasure.json").is_file() and replaceable(out)
    (out / "unet" / "extra.txt").write_text("written inside the studio's folder")
    again = _result(tiny_pipe).save(out, tiny_pipe)  # the marked folder is the studio's: replaced
    assert not (again / "unet" / "extra.txt").exists()
    legacy = tmp_path / "legacy"  # saved before the marker existed: erasure.json marks it
    _result(tiny_pipe).save(legacy, tiny_pipe)
    (legacy / MARKER).unlink()
    assert replaceable(legacy)
    _result(tiny_pipe).save(legacy, tiny_pipe)
    (tmp_path / "a-file").write_text("x")
    assert not replaceable(tmp_path / "a-file")
    assert load_pipeline(out, device="cpu").unet is not None


def test_an_erased_model_loads_without_the_float32_warning(tiny_pipe, tmp_path, capfd):
    from studio.loading import load_pipeline

    base = tmp_path / "base"
    tiny_pipe.save_pretrained(base, safe_serialization=True)
    folder = _result(tiny_pipe).save(tmp_path / "erased", tiny_pipe, base_model=str(base))
    capfd.readouterr()
    pipe = load_pipeline(folder, device="cpu", dtype=torch.float32)
    err = capfd.readouterr().err
    assert pipe.unet.dtype == torch.float32
    assert "should be kept in float32" not in err


# ---------------------------------------------------------------- TrainLoop: time and signals


def test_checkpoint_by_wall_time_as_well_as_by_steps(tmp_path):
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.1)
    cancel = threading.Event()
    loop = TrainLoop(
        "toy",
        10,
        {"w": w},
        {"opt": opt},
        checkpoint_dir=tmp_path,
        every=1000,
        checkpoint_seconds=0.0,
        cancel=cancel,
        progress=False,
        callback=lambda info: cancel.set() if info["step"] == 4 else None,
    )
    with pytest.raises(Exception, match="cancelled at step 4"):
        for _step, _rng, _gen in loop:
            w.grad = torch.ones(3)
            opt.step()
    meta, _ = load_checkpoint(tmp_path / "checkpoint.safetensors", loop.modules, loop.optimizers)
    assert meta["step"] == 4
    none = TrainLoop("toy", 3, {"w": w}, {"opt": opt}, checkpoint_dir=tmp_path / "b", every=1000, checkpoint_seconds=None, progress=False)
    for _ in none:
        pass
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()  # the last step is always saved


def test_sigint_saves_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight = erase(build_tiny_pipe(), Concept("a triangle"), "esd-x", config=TINY, progress=False)
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def interrupt_at_3(info):
        seen.append(info)
        if info["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the run

    with pytest.raises(Interrupted, match=r"stopped by SIGINT at step 3 of 6.*run the same command again") as err:
        erase(
            build_tiny_pipe(), Concept("a triangle"), "esd-x", config=TINY, checkpoint_dir=tmp_path, callback=interrupt_at_3, progress=False
        )
    assert str(tmp_path / "checkpoint.safetensors") in str(err.value)
    assert signal.getsignal(signal.SIGINT) is before  # the old handler is back
    assert all(is_event(e) and e["stage"] == "esd-x" and e["total"] == 6 for e in seen) and [e["step"] for e in seen] == [1, 2, 3]
    resumed = erase(build_tiny_pipe(), Concept("a triangle"), "esd-x", config=TINY, checkpoint_dir=tmp_path, progress=False)
    assert resumed.stats["resumed_from"] == 3
    for n, w in straight.weights.items():
        assert torch.equal(w, resumed.weights[n]), n


def test_signal_handlers_only_in_the_main_thread(tmp_path):
    w = torch.nn.Parameter(torch.zeros(1))
    seen = {}

    def run():
        loop = TrainLoop("toy", 2, {"w": w}, {"opt": torch.optim.SGD([w], lr=0.1)}, checkpoint_dir=tmp_path, progress=False)
        for _ in loop:
            seen["handler"] = signal.getsignal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen["handler"] is before


# ---------------------------------------------------------------- inversion input


def test_a_tiny_image_warns_that_it_is_upscaled(tiny_pipe):
    from PIL import Image

    from inversion.common import prepare_image

    with pytest.warns(UserWarning, match=r"the image is 1x1: its 1x1 square is upscaled to 32x32"):
        out, note = prepare_image(tiny_pipe, Image.new("RGB", (1, 1), (200, 10, 10)))
    assert out.size == (32, 32) and "resized to 32x32" in note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_image(tiny_pipe, Image.new("RGB", (60, 48)))  # downscaled: no warning


@pytest.mark.parametrize("source", ["", "   "])
def test_an_empty_source_prompt_is_an_error(tiny_pipe, source):
    from PIL import Image

    from inversion import edit

    seen = []
    with pytest.raises(ValueError, match=r"the source prompt is empty .*describe the image"):
        edit(tiny_pipe, Image.new("RGB", (32, 32)), source, "a blue circle", "ddim", callback=seen.append)
    assert not seen


# ---------------------------------------------------------------- evaluation progress


class CountingJudge:
    """Says every image shows the concept and predicts fixed labels: enough to drive the report."""

    name = "counting"

    def shows(self, images, concept):
        return np.ones(len(images), dtype=bool)

    def predict(self, images):
        return [{"shape": "square", "colour": "red"} for _ in images]


def test_evaluation_reports_progress_per_prompt_and_per_attack_step(tiny_pipe):
    from erasers.evaluate import EvalConfig, EvalSpec, evaluate

    spec = EvalSpec(
        "triangle", {"direct": ["a triangle", "a red triangle"], "synonym": ["a wedge"]}, [("a red square", {"shape": "square"})]
    )
    config = EvalConfig(
        seeds=2,
        attack="unlearndiffatk",
        attack_prompts=2,
        num_inference_steps=2,
        batch_size=3,
        attack_overrides={"num_inference_steps": 2, "timesteps": (500,), "iterations": 2, "num_tokens": 1},
    )
    never = type("Never", (CountingJudge,), {"shows": lambda self, images, concept: np.zeros(len(images), dtype=bool)})()
    seen = []
    report = evaluate(tiny_pipe, tiny_pipe, spec, never, config, callback=seen.append, progress=False)
    assert all(is_event(e) for e in seen)
    by_stage = {}
    for e in seen:
        by_stage.setdefault(e["stage"], []).append(e)
    erasure = by_stage["evaluation: erasure"]
    # 2 forms x 2 models; direct: 4 images in 2 batches, synonym: 2 in 1 -> (2 + 2 + 1 + 1) x 2 steps
    assert [e["step"] for e in erasure] == list(range(1, 13)) and {e["total"] for e in erasure} == {12}
    assert {(e["form"], e["model"]) for e in erasure} == {
        ("direct", "original"),
        ("direct", "erased"),
        ("synonym", "original"),
        ("synonym", "erased"),
    }
    assert by_stage["evaluation: utility"][-1]["step"] == by_stage["evaluation: utility"][-1]["total"] == 2 * 2
    steps = [e for e in by_stage["unlearndiffatk"] if e.get("phase") == "step"]
    assert [(e["attack_prompt"], e["step"]) for e in steps] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(e["attack_prompts"] == 2 for e in by_stage["unlearndiffatk"])
    assert [(e["step"], e["total"], e["prompt"]) for e in by_stage["evaluation: attack"]] == [
        (1, 2, "a triangle"),
        (2, 2, "a red triangle"),
    ]
    assert [e["phase"] for e in by_stage["evaluation"]] == ["erasure", "utility", "attack"]
    assert report["attack"]["n"] == 2 and report["erasure"]["direct"]["images"] == 4


def test_the_cli_reports_a_stopped_job_in_one_line(monkeypatch, capsys):
    """A job stopped by a signal (after its checkpoint) or cancelled ends with its message, not a stack trace."""
    import studio.cli
    from erasers.base import Interrupted

    def stopped(args):
        raise Interrupted("esd-x stopped by SIGINT at step 3 of 6; run the same command again to resume from there")

    monkeypatch.setattr(studio.cli, "cmd_generate", stopped)
    assert studio.cli.main(["generate", "--prompt", "a red triangle"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("stopped: esd-x stopped by SIGINT") and "run the same command again" in err and "Traceback" not in err
