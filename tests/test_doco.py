"""DoCo: the gradient surgery on hand-made gradients, the discriminator, the prompt pairs, resume after a kill,
clear errors, and erasure on the toy model."""

import math
import threading

import pytest
import torch

from erasers import Concept, erase, get_config
from erasers.doco import (
    ANCHOR_CACHE,
    DoCoConfig,
    PatchDiscriminator,
    concept_preserving_gradient,
    discriminator_blocks,
    toy_target,
    trainable_parameter_names,
    training_pairs,
)
from studio.loading import load_pipeline
from studio.progress import is_event
from studio.sampling import Cancelled

from conftest import HAS_TOY, OTHER_SHAPES, TARGET_FORMS, build_tiny_pipe, judge_shapes, kept, shown


TINY = dict(
    iterations=6, warmup_steps=2, batch_size=2, num_anchor_images=6, anchor_steps=3, anchor_batch_size=4, lr=1e-3, checkpoint_every=2
)
SQUARES = Concept(["a triangle"], anchors=["a square", "a red square", "a striped square on a dark background"])


# ---------------------------------------------------------------- the concept-preserving gradient


def test_official_surgery_removes_the_conflicting_component_by_the_documented_formula():
    g_u, g_p = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 2.0])
    cos = -1 / math.sqrt(2)  # cos(g_u, g_p)
    for lam in (1.0, 0.5):
        (out,) = concept_preserving_gradient([g_u], [g_p], lam, "official")
        # g_u - lambda * cos * g_p / |g_p|: no |g_u| factor, unlike PCGrad
        assert torch.allclose(out, torch.tensor([1.0, -1.0 - lam * cos]), atol=1e-6)
    assert torch.equal(g_u, torch.tensor([1.0, -1.0]))  # the inputs are not changed


def test_pcgrad_leaves_the_result_orthogonal_and_official_removes_at_least_as_much_after_clipping():
    torch.manual_seed(0)
    for _ in range(20):
        g_p = torch.randn(3, 5)
        g_u = -0.5 * g_p + 0.3 * torch.randn(3, 5)
        g_u = g_u / g_u.norm() * 0.8  # clipped: |g_u| <= 1
        (pc,) = concept_preserving_gradient([g_u], [g_p], method="pcgrad")
        (off,) = concept_preserving_gradient([g_u], [g_p], 1.0, "official")
        assert abs(torch.dot(pc.flatten(), g_p.flatten()).item()) < 1e-5
        assert torch.dot(off.flatten(), g_p.flatten()).item() >= -1e-6  # pushed to or past orthogonal


def test_agreeing_tensors_are_untouched_and_surgery_is_per_tensor():
    agree_u, agree_p = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.1]])
    conflict_u, conflict_p = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([-1.0, 1.0, 0.0])
    out = concept_preserving_gradient([agree_u, conflict_u, None], [agree_p, conflict_p, torch.ones(1)], 1.0, "official")
    assert out[0] is agree_u and out[2] is None
    assert not torch.equal(out[1], conflict_u) and torch.dot(out[1], conflict_p) > torch.dot(conflict_u, conflict_p)
    for method in ("official", "pcgrad"):
        assert concept_preserving_gradient([agree_u], [agree_p], 1.0, method)[0] is agree_u
    with pytest.raises(ValueError, match="unknown surgery method"):
        concept_preserving_gradient([agree_u], [agree_p], method="none")


# ---------------------------------------------------------------- discriminator, parameters, prompts


def test_discriminator_depth_follows_the_latent_size():
    assert [discriminator_blocks(s) for s in (64, 96, 32, 16, 8, 4)] == [4, 4, 3, 2, 2, 1]
    sd = PatchDiscriminator(4, discriminator_blocks(64))
    convs = [m for m in sd.model if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]  # the official PatchGAN
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in sd.model) == 3
    assert sd(torch.randn(2, 4, 64, 64)).shape == (2, 1, 3, 3)
    for size in (96, 32, 16, 8, 4):
        assert PatchDiscriminator(4, discriminator_blocks(size))(torch.randn(2, 4, size, size)).shape[-1] >= 1


def test_parameter_groups(tiny_pipe):
    kv = trainable_parameter_names(tiny_pipe.unet, "cross-attn")
    assert kv and all(n.split(".")[-2] in ("to_k", "to_v") and ".attn2." in n for n in kv)
    assert len(trainable_parameter_names(tiny_pipe.unet, "full-weight")) == len(list(tiny_pipe.unet.parameters()))
    result = erase(
        tiny_pipe, SQUARES, "doco", config={**TINY, "parameter_group": "full-weight", "iterations": 3, "warmup_steps": 1}, progress=False
    )
    assert len(result.weights) == len(list(tiny_pipe.unet.parameters())) and "conv_in.weight" in result.weights


def test_training_pairs_swap_the_anchor_word_for_the_target_word():
    concept = Concept(["a triangle", "a big Triangle, blue"], anchors=["a square", "a red square", "a striped square on a dark background"])
    assert training_pairs(concept) == [
        ("a square", "a triangle"),
        ("a red square", "a red triangle"),
        ("a striped square on a dark background", "a striped triangle on a dark background"),
        ("a big square, blue", "a big Triangle, blue"),
    ]
    assert training_pairs(Concept(["nudity"], anchors=["clothed", "a clothed person"]))[1] == ("a clothed person", "a nudity person")
    toy = toy_target("striped")
    assert toy.prompts == ["a striped shape"] and toy.anchors[0] == "a solid shape" and len(toy.anchors) == 41
    assert all(a.replace("solid", "striped") == t for a, t in training_pairs(toy))


def test_bad_inputs_are_clear_errors(tiny_pipe):
    with pytest.raises(ValueError, match="needs anchor prompts"):
        erase(tiny_pipe, Concept("a triangle"), "doco", config=TINY, progress=False)
    with pytest.raises(ValueError, match="does not contain the anchor word 'square'"):
        training_pairs(Concept(["a triangle"], anchors=["a square", "a circle"]))
    with pytest.raises(ValueError, match="differ by one word"):
        training_pairs(Concept(["a triangle"], anchors=["a triangle"]))
    with pytest.raises(ValueError, match="does not contain the target word"):
        training_pairs(Concept(["a triangle", "a wedge"], anchors=["a square"]))
    with pytest.raises(ValueError, match="CLIP takes at most 77"):
        erase(tiny_pipe, Concept(["a triangle"], anchors=["a square " + "red " * 80]), "doco", config=TINY, progress=False)
    with pytest.raises(ValueError, match="unknown DoCo surgery"):
        DoCoConfig(surgery="project")
    with pytest.raises(ValueError, match="unknown DoCo parameter_group"):
        get_config("doco", overrides={"parameter_group": "embedding"})
    with pytest.raises(ValueError, match="warmup_steps <= iterations"):
        DoCoConfig(iterations=10, warmup_steps=20)
    with pytest.raises(ValueError, match="must be another shape"):
        toy_target("triangle", anchor="red")


def test_defaults_are_the_official_readme():
    c = DoCoConfig()
    assert (c.iterations, c.warmup_steps, c.batch_size, c.unet_lr, c.surgery_lambda) == (2000, 1000, 8, pytest.approx(4.8e-5), 1.0)
    assert c.discriminator_lr == 1e-4 and DoCoConfig(concept_type="style").discriminator_lr == 5e-4
    old = DoCoConfig.earlier()
    assert (old.iterations, old.warmup_steps, old.lr, old.surgery_lambda, old.prior_loss_weight) == (1000, 200, 2e-6, 0.5, 0.0)


# ---------------------------------------------------------------- training, checkpoints, resume


def test_only_kv_change_warmup_trains_the_discriminator_only_and_result_applies(tiny_pipe):
    before = {n: p.clone() for n, p in tiny_pipe.unet.named_parameters()}
    warm = erase(build_tiny_pipe(), SQUARES, "doco", config={**TINY, "warmup_steps": TINY["iterations"]}, progress=False)
    assert all(torch.equal(w, before[n]) for n, w in warm.weights.items())  # D-only steps leave the UNet alone

    result = erase(tiny_pipe, SQUARES, "doco", config=TINY, progress=False)
    changed = {n for n, p in tiny_pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(result.weights) and all(n.split(".")[-2] in ("to_k", "to_v") for n in changed)
    fresh = build_tiny_pipe()
    result.apply(fresh)
    assert all(torch.equal(p, dict(tiny_pipe.unet.named_parameters())[n]) for n, p in fresh.unet.named_parameters())
    # anchors: 6 images x 3 steps x 2 (CFG); then 2 D-only steps x 2B and 4 full steps x 3B evaluations
    assert result.stats["unet_evals"] == 6 * 3 * 2 + 2 * 4 + 4 * 6 and result.stats["steps"] == 6


@pytest.mark.parametrize("surgery, stop", [("official", 3), ("none", 1)])
def test_killed_run_resumes_to_the_same_weights(tmp_path, surgery, stop):
    config = {**TINY, "surgery": surgery}
    straight = erase(build_tiny_pipe(), SQUARES, "doco", config=config, progress=False)

    cancel = threading.Event()
    seen = []

    def kill(info):
        assert is_event(info)
        seen.append(info["stage"])
        if info["stage"] == "doco" and info["step"] == stop:
            cancel.set()

    with pytest.raises(Cancelled):
        erase(build_tiny_pipe(), SQUARES, "doco", config=config, checkpoint_dir=tmp_path, callback=kill, cancel=cancel, progress=False)
    assert (tmp_path / ANCHOR_CACHE).is_file() and "anchor images" in seen
    seen.clear()
    pipe = build_tiny_pipe()
    resumed = erase(pipe, SQUARES, "doco", config=config, checkpoint_dir=tmp_path, callback=kill, progress=False)
    assert "anchor images" not in seen  # the cached anchor images are not generated again
    assert resumed.stats["resumed_from"] == stop and resumed.stats["unet_evals"] == straight.stats["unet_evals"]
    for n, w in straight.weights.items():
        assert torch.equal(w, resumed.weights[n]), n


def test_cancel_while_generating_anchors_keeps_the_finished_ones(tmp_path):
    straight = erase(build_tiny_pipe(), SQUARES, "doco", config=TINY, progress=False)
    cancel = threading.Event()
    with pytest.raises(Cancelled, match="anchor images"):
        erase(
            build_tiny_pipe(),
            SQUARES,
            "doco",
            config=TINY,
            checkpoint_dir=tmp_path,
            cancel=cancel,
            progress=False,
            callback=lambda info: cancel.set() if info["stage"] == "anchor images" else None,
        )
    assert (tmp_path / ANCHOR_CACHE).is_file() and not (tmp_path / "checkpoint.safetensors").exists()
    resumed = erase(build_tiny_pipe(), SQUARES, "doco", config=TINY, checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(w, resumed.weights[n]) for n, w in straight.weights.items())


def test_checkpoint_of_other_prompts_is_refused(tmp_path):
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        erase(
            build_tiny_pipe(),
            SQUARES,
            "doco",
            config=TINY,
            checkpoint_dir=tmp_path,
            cancel=cancel,
            progress=False,
            callback=lambda info: cancel.set() if info["stage"] == "doco" else None,
        )
    other = Concept(["a star"], anchors=["a square"])
    with pytest.raises(ValueError, match="other settings"):
        erase(build_tiny_pipe(), other, "doco", config=TINY, checkpoint_dir=tmp_path, progress=False)


# ---------------------------------------------------------------- erasure on the toy model


# On top of the toy preset (lr 3e-5, 256 anchor images, 100 D + 400 UNet steps): 50 D + 100 UNet steps and 64
# anchor images of 10 steps. Observed (judged mid-run): triangle prompts still 100% triangles after 50 UNet steps,
# 71% after 75, then at 100 triangle 12% and square 88% of the 24 images, the other shapes right in 96% (original:
# 100%, 0%, 100%); so the budget has about 25 UNet steps of margin. Twice the lr reaches 0% in 75 UNet steps (a 25%
# cheaper erasure), but this test keeps the preset's lr.
TEST_BUDGET = {"iterations": 150, "warmup_steps": 50, "num_anchor_images": 64, "anchor_steps": 10, "anchor_batch_size": 64}
KEPT = [s for s in OTHER_SHAPES if s != "square"]  # square is the anchor: its images are not "the others"


@pytest.mark.skipif(not HAS_TOY, reason="the toy model is not built yet")
def test_doco_moves_triangles_toward_squares_and_keeps_the_others(judge, original_shapes):
    """A short run (the toy preset, fewer steps) turns 'triangle' prompts into squares; other shapes stay."""
    pipe = load_pipeline("toy", device="cpu")
    erase(pipe, toy_target("triangle"), "doco", preset="toy", config=TEST_BUDGET, progress=False)
    after = judge_shapes(pipe, judge)
    tri_before, tri_after = shown(original_shapes, TARGET_FORMS, "triangle"), shown(after, TARGET_FORMS, "triangle")
    sq_before, sq_after = shown(original_shapes, TARGET_FORMS, "square"), shown(after, TARGET_FORMS, "square")
    keep_before, keep_after = kept(original_shapes, KEPT), kept(after, KEPT)
    assert tri_before >= 0.8  # so the next line fails on the unchanged model
    assert tri_after <= 0.5 * tri_before and sq_after >= sq_before + 0.3, (tri_before, tri_after, sq_before, sq_after)
    assert keep_after >= keep_before - 0.15, (keep_before, keep_after)  # stated tolerance: 15 points
