"""ESD and the eraser interface: parameter selection, resume after a kill, saving, clear errors, and erasure."""

import threading

import pytest
import torch

from erasers import Concept, erase, get_config, toy_target
from erasers.esd import ESDConfig, trainable_parameter_names
from studio.loading import load_pipeline
from studio.sampling import Cancelled

from conftest import HAS_TOY, OTHER_SHAPES, TARGET_FORMS, build_tiny_pipe, judge_shapes, kept, shown


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
        erase(
            build_tiny_pipe(),
            Concept("a triangle"),
            "esd-u",
            config=TINY,
            checkpoint_dir=tmp_path,
            callback=stop_at_3,
            cancel=cancel,
            progress=False,
        )
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
        erase(
            pipe,
            Concept("a triangle"),
            "esd-x",
            config=TINY,
            checkpoint_dir=tmp_path,
            cancel=cancel,
            progress=False,
            callback=lambda info: cancel.set() if info["step"] == 2 else None,
        )
    resumed = erase(pipe, Concept("a triangle"), "esd-x", config=TINY, checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(w, resumed.weights[n]) for n, w in straight.weights.items())


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        erase(
            build_tiny_pipe(),
            Concept("a triangle"),
            "esd-x",
            config=TINY,
            checkpoint_dir=tmp_path,
            cancel=cancel,
            progress=False,
            callback=lambda info: cancel.set(),
        )
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
    nan = {**TINY, "negative_guidance": float("nan")}
    with pytest.raises(ValueError, match="negative_guidance=nan is not a finite number"):  # settings are checked
        erase(tiny_pipe, Concept("a triangle"), "esd-x", config=nan, progress=False)
    with pytest.raises(FloatingPointError, match="loss became nan"):  # a config object goes past that check
        erase(tiny_pipe, Concept("a triangle"), "esd-x", config=ESDConfig(**nan), progress=False)


# On top of the toy preset (lr 1e-3 x 50 steps): x_t from 20-step DDIM trajectories instead of 50, as the toy model
# samples (measured, CPU seconds on a loaded machine: the erasure 17 s instead of 38 s). Observed with it: triangle
# shown in 8% of the 24 images (direct 6%, synonyms 12%; the preset as it is: 4%), the other shapes right in 100%
# (original: 100% triangle, 97% others).
TEST_BUDGET = {"num_inference_steps": 20}


@pytest.mark.skipif(not HAS_TOY, reason="the toy model is not built yet")
def test_esd_erases_a_toy_concept_and_keeps_the_others(judge, original_shapes):
    """The toy preset (20-step trajectories) lowers the judged rate of triangles on direct and synonym prompts;
    other shapes stay."""
    pipe = load_pipeline("toy", device="cpu")
    erase(pipe, toy_target("esd-x", "triangle"), "esd-x", preset="toy", config=TEST_BUDGET, progress=False)
    after = judge_shapes(pipe, judge)
    before_rate, after_rate = shown(original_shapes, TARGET_FORMS, "triangle"), shown(after, TARGET_FORMS, "triangle")
    before_keep, after_keep = kept(original_shapes, OTHER_SHAPES), kept(after, OTHER_SHAPES)
    assert before_rate >= 0.8  # so the next line fails on the unerased model
    assert after_rate <= 0.3, (before_rate, after_rate)
    assert after_keep >= 0.85 * before_keep, (before_keep, after_keep)


def test_toy_target_gives_doco_its_anchors_and_the_others_the_erasure_prompts():
    from erasers import toy_target

    esd, doco = toy_target("esd-x", "triangle"), toy_target("doco", "triangle")
    assert esd.name == "triangle" and not esd.anchors and any("triangle" in p for p in esd.prompts)
    assert doco.anchors and all("triangle" not in a for a in doco.anchors)
    for method in ("uce", "rece"):  # the closed forms preserve the other shapes (their toy presets assume it)
        target = toy_target(method, "triangle")
        assert target.prompts == esd.prompts and not any("triangle" in p for p in target.retain)
        assert {"a circle", "a square"} <= set(target.retain)
    with pytest.raises(ValueError, match="unknown erasure method"):
        toy_target("esd-q", "triangle")
