"""Our DDIM sampling loop equals the diffusers pipeline and adds callbacks, cancellation and per-image seeds."""

import threading

import numpy as np
import pytest
import torch

from studio.sampling import Cancelled, sample


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_same_images_as_stable_diffusion_pipeline(toy_pipe, guidance):
    prompts = ["a red triangle", "a striped blue star on a dark background"]
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    ref = toy_pipe(prompts, generator=gens, num_inference_steps=20, guidance_scale=guidance, output_type="np").images
    ours = sample(toy_pipe, prompts, seed=[11, 12], num_inference_steps=20, guidance_scale=guidance, output_type="pt").images
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), ref, atol=1e-6)


def test_callback_reports_each_step_and_denoised_latents(tiny_pipe):
    seen = []
    sample(tiny_pipe, "a red triangle", seed=0, num_inference_steps=5, callback=seen.append)
    assert [s["i"] for s in seen] == list(range(5))
    assert seen[0]["t"] > seen[-1]["t"]
    assert seen[-1]["x"].shape == seen[-1]["denoised"].shape == (1, 4, 8, 8)


def test_cancel_stops_the_loop(tiny_pipe):
    cancel = threading.Event()
    steps = []

    def cb(info):
        steps.append(info["i"])
        if info["i"] == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        sample(tiny_pipe, "a red triangle", seed=0, num_inference_steps=10, callback=cb, cancel=cancel)
    assert steps == [0, 1, 2]


def test_an_image_does_not_depend_on_its_batch(tiny_pipe):
    alone = sample(tiny_pipe, "a blue star", seed=[5], num_inference_steps=4, output_type="pt").images
    batch = sample(tiny_pipe, ["a red triangle", "a blue star"], seed=[9, 5], num_inference_steps=4, output_type="pt").images
    torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=0)


def test_stop_at_returns_partial_trajectory(tiny_pipe):
    full = sample(tiny_pipe, "a red triangle", seed=0, num_inference_steps=10, output_type="latent")
    part = sample(tiny_pipe, "a red triangle", seed=0, num_inference_steps=10, stop_at=4, output_type="latent")
    assert len(part.timesteps) == 4 and part.timesteps == full.timesteps[:4]
    assert not torch.allclose(part.latents, full.latents)
