"""STEREO: registry and presets, both stages run, exact resume after a kill, clear errors, the toy anchors."""

import threading

import pytest
import torch
from conftest import build_tiny_pipe

from erasers import METHODS, Concept, erase, get_config, toy_target
from erasers.stereo import STEREOConfig
from studio.progress import is_event
from studio.sampling import Cancelled

# 2 rounds x 3 steps, then 3 REO steps; 2-step inversions on 2 images per round
TINY = {
    "train_method": "esd-x",
    "rounds": 2,
    "iterations": 3,
    "ste_lr": 1e-3,
    "reo_lr": 1e-3,
    "num_inference_steps": 4,
    "num_images": 4,
    "image_steps": 2,
    "ti_steps": 2,
    "ti_batch_size": 2,
    "initializer": "shape",
    "checkpoint_every": 2,
}
CONCEPT = Concept(["a triangle"], anchors=["a red triangle on a dark background", "a striped blue triangle"])


def test_registered_with_official_defaults_and_a_toy_preset():
    assert "stereo" in METHODS
    c = get_config("stereo")
    assert (c.rounds, c.iterations, c.ste_lr, c.reo_lr, c.ti_steps) == (4, 200, 5e-6, 2e-5, 3000)
    assert (c.negative_guidance, c.anchor_weight, c.concept_weight) == (1.0, 1.0, 3.0)  # what the official code computes
    toy = get_config("stereo", "toy")
    assert toy.rounds == 2 and toy.total_steps < c.total_steps


def test_both_stages_run_and_only_the_selected_parameters_change():
    pipe = build_tiny_pipe()
    before = {n: p.clone() for n, p in pipe.unet.named_parameters()}
    te = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    events = []
    result = erase(pipe, CONCEPT, "stereo", config=TINY, callback=events.append, progress=False)
    changed = {n for n, p in pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(result.weights) and all(".attn2." in n for n in changed)
    assert all(torch.equal(v, pipe.text_encoder.state_dict()[k]) for k, v in te.items())  # tokens never enter the encoder
    assert [t["round"] for t in result.stats["tokens"]] == [1, 2] and len(result.stats["token_embeddings"]) == 2
    assert result.stats["steps"] == 2 * 3 + 3 and result.method == "stereo"
    phases = [e.get("phase") for e in events if e["stage"] == "stereo"]
    assert phases == ["ste"] * 6 + ["reo"] * 3
    assert any(e["stage"] == "stereo-inversion" for e in events) and all(is_event(e) for e in events)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    straight = erase(build_tiny_pipe(), CONCEPT, "stereo", config=TINY, progress=False)
    cancel = threading.Event()
    # stop after step 4: inside round 2, after round 1's inversion (its token must come back from the checkpoint)
    stop = lambda info: cancel.set() if info["stage"] == "stereo" and info["step"] == 4 else None
    pipe = build_tiny_pipe()
    with pytest.raises(Cancelled):
        erase(pipe, CONCEPT, "stereo", config=TINY, checkpoint_dir=tmp_path, callback=stop, cancel=cancel, progress=False)
    resumed = erase(pipe, CONCEPT, "stereo", config=TINY, checkpoint_dir=tmp_path, progress=False)  # the half-trained pipe
    assert resumed.stats["resumed_from"] == 4
    assert resumed.stats["token_embeddings"] == straight.stats["token_embeddings"]
    for n, w in straight.weights.items():
        assert torch.equal(w, resumed.weights[n]), n


def test_bad_inputs_are_clear_errors():
    pipe = build_tiny_pipe()
    with pytest.raises(ValueError, match="anchor"):
        erase(pipe, Concept(["a triangle"]), "stereo", config=TINY, progress=False)
    with pytest.raises(ValueError, match="rounds"):
        STEREOConfig(rounds=0)
    with pytest.raises(ValueError, match="gallery"):
        STEREOConfig(rounds=4, num_images=2)
    with pytest.raises(ValueError, match="train_method"):
        STEREOConfig(train_method="xattn")
    with pytest.raises(ValueError, match="reo_iterations"):
        STEREOConfig(reo_iterations=0)


def test_reo_can_run_its_own_number_of_steps():
    """`reo_iterations` (the preset sweep's budget) changes REO's length only; None keeps the official one flag."""
    assert STEREOConfig(rounds=2, iterations=5).total_steps == 15
    assert STEREOConfig(rounds=2, iterations=5, reo_iterations=2).total_steps == 12
    events = []
    result = erase(build_tiny_pipe(), CONCEPT, "stereo", config={**TINY, "reo_iterations": 5}, callback=events.append, progress=False)
    assert [e.get("phase") for e in events if e["stage"] == "stereo"] == ["ste"] * 6 + ["reo"] * 5
    assert result.stats["steps"] == 11


def test_toy_anchors_show_the_concept_and_are_not_evaluation_prompts():
    from studio.toyworld.captions import FORMS, prompts_for

    target = toy_target("stereo", "triangle")
    evaluated = {p for form in FORMS for p, _ in prompts_for("triangle", form)}
    assert target.prompts == ["a triangle"] and len(target.anchors) >= 20
    assert all("triangle" in a for a in target.anchors) and not evaluated & set(target.anchors)
