"""Batched UnlearnDiffAtk (`run_many`): the same per-prompt results as one prompt at a time; budgets and errors."""

import numpy as np
import pytest
import torch
from conftest import build_tiny_pipe

from erasers import attacks
from erasers.attacks import NoAttackConfig, RandomTokensConfig, UnlearnDiffAtkConfig, run_attack, run_many, target_latents
from studio.progress import is_event

NEVER = lambda images: np.zeros(len(images), dtype=bool)
PROMPTS = ["a red triangle", "a blue star", "a green circle on a dark background", "a striped square", "a dotted cross"]
SEEDS = [0, 1, 2, 3, 4]
CONFIG = {"timesteps": (100, 500, 900), "iterations": 3, "num_inference_steps": 2, "vocabulary": "words"}


def bright(images):
    """A judge with a mix of outcomes on the tiny random model for these prompts and seeds: the 3rd prompt's own
    image passes (pre-attack success), the 1st passes after its second block, the others never do. The
    mean pixel values it compares are at least 0.02 (60 grey levels summed) from the threshold (set for the
    token draws of `unlearndiffatk.sample_rows`)."""
    return np.array([np.asarray(im, dtype=float).mean() > 120.086 for im in images])


@pytest.fixture(scope="module")
def pipes():
    return build_tiny_pipe(0), build_tiny_pipe(1)  # erased, original


def test_batched_unlearndiffatk_equals_one_at_a_time(pipes):
    erased, original = pipes
    single = [
        run_attack("unlearndiffatk", erased, p, target_latents(original, p, seed=s), bright, CONFIG, seed=s, progress=False)
        for p, s in zip(PROMPTS, SEEDS)
    ]
    events = []
    # batch_size 2: four prompts are attacked, so a waiting prompt takes the place of one that succeeded
    run = run_many(
        "unlearndiffatk",
        erased,
        PROMPTS,
        SEEDS,
        bright,
        {**CONFIG, "batch_size": 2},
        original=original,
        callback=events.append,
        progress=False,
    )
    assert run.attack == "unlearndiffatk" and len(run.results) == len(PROMPTS)
    outcomes = [(r.pre_success, r.success, r.generations) for r in single]
    assert outcomes == [
        (False, True, 3),
        (False, False, 4),
        (True, True, 1),
        (False, False, 4),
        (False, False, 4),
    ]  # the mix the test needs
    for a, b in zip(single, run.results):
        assert (b.prompt, b.seed, b.pre_success, b.success) == (a.prompt, a.seed, a.pre_success, a.success)
        assert b.adversarial_tokens == a.adversarial_tokens and b.adversarial_prompt == a.adversarial_prompt
        assert (b.gradient_steps, b.generations, b.unet_evals, b.exact_tokens) == (
            a.gradient_steps,
            a.generations,
            a.unet_evals,
            a.exact_tokens,
        )
        assert [(h["t"], h["prompt"], h["success"]) for h in b.history] == [(h["t"], h["prompt"], h["success"]) for h in a.history]
        np.testing.assert_allclose(b.losses, a.losses, rtol=1e-4, atol=1e-6)
        assert np.asarray(b.image).shape == np.asarray(a.image).shape
    assert run.summary()["asr"] == attacks.asr(single)["asr"] == 0.4
    assert run.unet_evals == sum(r.unet_evals for r in single)
    assert all(is_event(e) and e["stage"] == "unlearndiffatk" for e in events)
    steps = [e for e in events if e["phase"] == "step"]
    assert steps[-1]["step"] == sum(r.gradient_steps for r in single) == 33  # one prompt stopped after 2 of its 3 blocks
    assert steps[-1]["total"] == 4 * 9  # the most: every attacked prompt's full schedule
    assert max(e["active"] for e in steps) == 2
    evals = [e for e in events if e["phase"] == "eval"]
    assert sorted(e["prompt_index"] for e in evals) == sorted(i + 1 for i, r in enumerate(single) for _ in range(r.generations))


def test_unet_budgets_are_what_an_unsuccessful_attack_spends(pipes):
    erased, original = pipes
    config = UnlearnDiffAtkConfig(**CONFIG)
    assert attacks.get("unlearndiffatk").cost(config) == config.unet_budget() == 3 * 3 + 4 * 2 * 2
    assert UnlearnDiffAtkConfig().unet_budget() == 2000 + 51 * 100  # the official budget, as its docstring says
    run = run_many("unlearndiffatk", erased, PROMPTS[:2], 0, NEVER, config, original=original, progress=False)
    assert [r.unet_evals for r in run.results] == [config.unet_budget()] * 2
    assert attacks.get("none").cost(NoAttackConfig()) == 100 and NoAttackConfig(guidance_scale=1.0).unet_budget() == 50
    assert attacks.get("random").cost(RandomTokensConfig(draws=3, num_inference_steps=2)) == 4 * 2 * 2
    r = run_attack("random", erased, PROMPTS[0], None, NEVER, {"draws": 3, "num_inference_steps": 2}, progress=False)
    assert r.unet_evals == RandomTokensConfig(draws=3, num_inference_steps=2).unet_budget()


def test_bad_inputs_are_clear_errors(pipes):
    erased, _ = pipes
    for bad in ({"iterations": 0}, {"num_timesteps": 0}, {"timesteps": ()}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="budget of 0|>= 1"):
            run_many("unlearndiffatk", erased, PROMPTS[:1], 0, NEVER, bad, original=erased)
    with pytest.raises(ValueError, match=r"needs the original \(unerased\) model; pass original="):
        run_many("unlearndiffatk", erased, PROMPTS[:1], 0, NEVER, CONFIG)
    with pytest.raises(ValueError, match="one seed per prompt"):
        run_many("unlearndiffatk", erased, PROMPTS[:2], [0, 1, 2], NEVER, CONFIG, original=erased)
    with pytest.raises(ValueError, match="Shorten"):
        run_many("unlearndiffatk", erased, [" ".join(["nudity"] * 37)], 0, NEVER, CONFIG, original=erased)
    with pytest.raises(ValueError, match="unknown attack"):
        run_many("unlearndiffatk-batched", erased, PROMPTS[:1], 0, NEVER)
    assert torch.is_grad_enabled()
