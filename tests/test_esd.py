"""ESD and the eraser interface: parameter selection, resume after a kill, saving, clear errors, and erasure."""

import threading

import numpy as np
import pytest
import torch

from erasers import Concept, erase, get_config
from erasers.esd import ESDConfig, trainable_parameter_names
from studio.loading import load_pipeline
from studio.sampling import Cancelled

from conftest import build_tiny_pipe


TINY = dict(iterations=6, num_inference_steps=8, lr=1e-3, checkpoint_every=2)


def test_variants_select_the_documented_parameters(tiny_pipe):
    unet = tiny_pipe.unet
    x = trainable_parameter_names(unet, "esd-x")
    u = trainable_parameter_names(unet, "esd-u")
    strict = trainable_parameter_names(unet, "esd-x-strict")
    everything = trainable_parameter_names(unet, "esd-all")
    assert x and all(".attn2." in n for n in x)
    assert u and not any(".attn2." in n for n in u)
    assert set(x) | set(u) == set(everything) and not set(x) & set(u)
    assert strict and all(n.split(".")[-2] in ("to_k", "to_v") for n in strict)
    assert not any("norm" in n.split(".")[-2] for n in everything)  # norm layers never train


def test_only_the_selected_parameters_change_and_result_applies(tiny_pipe):
    before = {n: p.clone() for n, p in tiny_pipe.unet.named_parameters()}
    result = erase(tiny_pipe, Concept("a triangle"), "esd-x", config=TINY, progress=False)
    changed = {n for n, p in tiny_pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(result.weights) and all(".attn2." in n for n in changed)
    fresh = build_tiny_pipe()
    result.apply(fresh)
    assert all(torch.equal(p, dict(tiny_pipe.unet.named_parameters())[n]) for n, p in fresh.unet.named_parameters())
    assert result.stats["unet_evals"] > 6 and result.stats["steps"] == 6


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    straight = erase(build_tiny_pipe(), Concept("a triangle"), "esd-u", config=TINY, progress=False)

    cancel = threading.Event()
    stop_at_3 = lambda info: cancel.set() if info["step"] == 3 else None  # noqa: E731
    with pytest.raises(Cancelled):
        erase(build_tiny_pipe(), Concept("a triangle"), "esd-u", config=TINY, checkpoint_dir=tmp_path, callback=stop_at_3, cancel=cancel, progress=False)
    resumed = erase(build_tiny_pipe(), Concept("a triangle"), "esd-u", config=TINY, checkpoint_dir=tmp_path, progress=False)
    assert resumed.stats["resumed_from"] == 3
    for n, w in straight.weights.items():
        assert torch.equal(w, resumed.weights[n]), n


def test_resume_survives_a_pipe_that_was_already_changed(tmp_path):
    """The original weights come back from the checkpoint, not from the (partly trained) pipe."""
    straight = erase(build_tiny_pipe(), Concept("a triangle"), "esd-x", config=TINY, progress=False)
    pipe = build_tiny_pipe()
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        erase(pipe, Concept("a triangle"), "esd-x", config=TINY, checkpoint_dir=tmp_path, cancel=cancel, progress=False,
              callback=lambda info: cancel.set() if info["step"] == 2 else None)
    resumed = erase(pipe, Concept("a triangle"), "esd-x", config=TINY, checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(w, resumed.weights[n]) for n, w in straight.weights.items())


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        erase(build_tiny_pipe(), Concept("a triangle"), "esd-x", config=TINY, checkpoint_dir=tmp_path, cancel=cancel, progress=False,
              callback=lambda info: cancel.set())
    with pytest.raises(ValueError, match="other settings"):
        erase(build_tiny_pipe(), Concept("a triangle"), "esd-x", config={**TINY, "lr": 5e-3}, checkpoint_dir=tmp_path, progress=False)


def test_erased_model_saves_and_loads_as_a_complete_pipeline(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "base")
    base = load_pipeline(tmp_path / "base", device="cpu")
    result = erase(base, Concept("a triangle"), "esd-x", config=TINY, progress=False)
    folder = result.save(tmp_path / "erased", base, base_model=str(tmp_path / "base"))
    assert (folder / "unet").is_dir() and not (folder / "vae").exists()
    loaded = load_pipeline(folder, device="cpu")
    for n, p in loaded.unet.named_parameters():
        assert torch.equal(p, dict(base.unet.named_parameters())[n]), n
    assert loaded.vae is not None and loaded.text_encoder is not None


def test_bad_inputs_are_clear_errors(tiny_pipe):
    with pytest.raises(ValueError, match="empty"):
        Concept(["", "  "])
    with pytest.raises(ValueError, match="CLIP takes at most 77"):
        erase(tiny_pipe, Concept("a red triangle " * 30), "esd-x", config=TINY, progress=False)
    with pytest.raises(ValueError, match="unknown erasure method 'esd-z'"):
        erase(tiny_pipe, Concept("a triangle"), "esd-z")
    with pytest.raises(ValueError, match="has no setting learning_rate"):
        get_config("esd-x", overrides={"learning_rate": 1.0})
    with pytest.raises(ValueError, match="unknown ESD train_method"):
        ESDConfig(train_method="esd-q")


def test_nan_loss_stops_with_a_clear_error(tiny_pipe):
    with pytest.raises(FloatingPointError, match="loss became nan"):
        erase(tiny_pipe, Concept("a triangle"), "esd-x", config={**TINY, "negative_guidance": float("nan")}, progress=False)


def test_esd_erases_a_toy_concept_and_keeps_the_others(judge):
    """The toy preset lowers the judged rate of triangles on direct prompts; other shapes stay."""
    from erasers.evaluate import EvalConfig, generate
    from studio.toyworld.captions import erasure_prompts, prompts_for

    pipe = load_pipeline("toy", device="cpu")
    cfg = EvalConfig(seeds=3, num_inference_steps=25)
    target = [p for p, _ in prompts_for("triangle", "direct", 8)]
    others = [p for s in ("circle", "square", "star") for p, _ in prompts_for(s, "direct", 3)]
    others_shape = [s for s in ("circle", "square", "star") for _ in range(3 * cfg.seeds)]
    before_rate = judge.shows(generate(pipe, target, cfg), "triangle").mean()
    before_keep = np.mean([p["shape"] == s for p, s in zip(judge.predict(generate(pipe, others, cfg)), others_shape)])
    erase(pipe, Concept(erasure_prompts("triangle"), name="triangle"), "esd-x", preset="toy", progress=False)
    after_rate = judge.shows(generate(pipe, target, cfg), "triangle").mean()
    after_keep = np.mean([p["shape"] == s for p, s in zip(judge.predict(generate(pipe, others, cfg)), others_shape)])
    assert before_rate >= 0.8
    assert after_rate <= 0.3, (before_rate, after_rate)
    assert after_keep >= 0.85 * before_keep, (before_keep, after_keep)


def test_toy_target_gives_doco_its_anchors_and_the_others_the_erasure_prompts():
    from erasers import toy_target

    esd, doco = toy_target("esd-x", "triangle"), toy_target("doco", "triangle")
    assert esd.name == "triangle" and not esd.anchors and any("triangle" in p for p in esd.prompts)
    assert doco.anchors and all("triangle" not in a for a in doco.anchors)
    with pytest.raises(ValueError, match="unknown erasure method"):
        toy_target("esd-q", "triangle")
