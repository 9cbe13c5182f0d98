"""Our DDIM sampling loop equals the diffusers pipeline and adds callbacks, cancellation and per-image seeds."""

import threading

import numpy as np
import pytest
import torch

from studio.progress import is_event
from studio.sampling import Cancelled, sample, sample_many


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
    assert all(is_event(s) for s in seen)
    assert [(s["stage"], s["step"], s["total"]) for s in seen] == [("sampling", k, 5) for k in range(1, 6)]
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


def test_sample_many_is_prompts_times_seeds_in_any_batch_size(tiny_pipe):
    prompts = ["a red triangle", "a blue star"]
    seen = []
    batched = sample_many(tiny_pipe, prompts, [3, 4, 5], batch_size=4, num_inference_steps=3, callback=seen.append)
    alone = [sample(tiny_pipe, p, seed=[s], num_inference_steps=3).images[0] for p in prompts for s in (3, 4, 5)]
    assert len(batched) == 6
    for a, b in zip(batched, alone):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    assert all(is_event(e) and e["stage"] == "sampling" for e in seen)
    assert [(e["step"], e["total"]) for e in seen] == [(k, 6) for k in range(1, 7)]  # 2 batches x 3 steps
    assert [e["batch"] for e in seen] == [0, 0, 0, 1, 1, 1] and seen[-1]["images"] == 4
    assert len(sample_many(tiny_pipe, "a red triangle", 2, num_inference_steps=2)) == 2  # a count of seeds


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_inference_steps=0), "num_inference_steps must be a whole number of steps >= 1, got 0"),
        (dict(num_inference_steps=-5), "got -5"),
        (dict(num_inference_steps=2.5), "got 2.5"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number, got nan"),
        (dict(guidance_scale=float("inf")), "got inf"),
        (dict(height=20), "height must be a positive multiple of 8 pixels, got 20"),
        (dict(width=0), "width must be a positive multiple of 8 pixels, got 0"),
        (dict(height=4096, width=4096), "height 4096 is over 4x the model's resolution (32 px); use at most 128, or pass force=True"),
    ],
)
def test_bad_settings_fail_before_any_work(tiny_pipe, kwargs, message):
    seen = []
    with pytest.raises(ValueError) as err:
        sample(tiny_pipe, "a red triangle", seed=0, callback=seen.append, **{"num_inference_steps": 2, **kwargs})
    assert message in str(err.value) and not seen


def test_big_sizes_need_force_and_batch_size_is_checked(tiny_pipe):
    out = sample(tiny_pipe, "a red triangle", seed=0, num_inference_steps=1, height=136, width=16, force=True)
    assert out.images[0].size == (16, 136)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match=f"batch_size must be a whole number >= 1, got {bad}"):
            sample_many(tiny_pipe, ["a red triangle"], 1, batch_size=bad, num_inference_steps=1)
    with pytest.raises(ValueError, match="nothing to sample: 1 prompts x 0 seeds"):
        sample_many(tiny_pipe, ["a red triangle"], 0, num_inference_steps=1)


def test_decoding_applies_the_vae_shift_factor(tiny_pipe):
    """One latent space for sampling and inversion: decode(encode(x)) round-trips with a shift_factor too."""
    from studio import latents

    x = sample(tiny_pipe, "a red triangle", seed=0, num_inference_steps=2, output_type="pt").images
    z = latents.encode(tiny_pipe.vae, x)
    ref = latents.decode(tiny_pipe, z)
    vae = tiny_pipe.vae
    old = vae.config.get("shift_factor")
    try:
        vae.register_to_config(shift_factor=0.5)
        z_shifted = latents.encode(vae, x)
        torch.testing.assert_close(z_shifted, z - 0.5 * vae.config.scaling_factor, atol=1e-5, rtol=0)
        torch.testing.assert_close(latents.decode(vae, z_shifted), ref, atol=1e-5, rtol=0)
    finally:
        vae.register_to_config(shift_factor=old)
    assert latents.vae_scale_factor(tiny_pipe) == 4 and latents.resolution(tiny_pipe) == 32
