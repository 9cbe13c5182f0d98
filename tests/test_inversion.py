"""Inversion on the tiny random model: scheduler conventions, prediction types, null-text's
bookkeeping (fp32, eps_c once per step), direct and negative-prompt identities, the inversion file,
image input, cancellation. Quality on the trained toy model is in test_inversion_toy.py."""

import threading

import numpy as np
import pytest
import torch

from conftest import build_tiny_pipe


SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def _image(seed=3, **labels):
    from studio.toyworld.render import render

    labels = {"shape": "circle", "colour": "red", "style": "solid", "background": "light", **labels}
    return render(labels, seed=seed).image


def test_pivot_follows_diffusers_inverse_scheduler(tiny_pipe):
    from diffusers import DDIMInverseScheduler

    from inversion.common import embed, schedulers
    from inversion.ddim import ddim_pivot

    forward, inverse = schedulers(tiny_pipe, 50)
    assert inverse.timesteps[:2].tolist() == [1, 21] and inverse.timesteps[-1].item() == 981  # as the NTI notebook
    assert forward.timesteps.flip(0).tolist() == inverse.timesteps.tolist()
    forward, inverse = schedulers(tiny_pipe, 4)
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = embed(tiny_pipe, "a red circle")
    pivot = ddim_pivot(tiny_pipe.unet, inverse, z0, cond)
    reference = DDIMInverseScheduler.from_config(tiny_pipe.scheduler.config)
    reference.set_timesteps(4)
    z = z0
    with torch.no_grad():
        for k, t in enumerate(reference.timesteps):
            z = reference.step(tiny_pipe.unet(z, t, encoder_hidden_states=cond).sample, t, z).prev_sample
            assert torch.allclose(pivot[k + 1], z, atol=1e-6)
    assert pivot.shape == (5, 1, 4, 8, 8) and torch.equal(pivot[0], z0)


class _Oracle(torch.nn.Module):
    """The exact denoiser of a one-point data set {x0}, predicting epsilon or v."""

    def __init__(self, x0, kind, alphas_cumprod):
        super().__init__()
        self.x0, self.kind, self.a = x0, kind, alphas_cumprod
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the module a dtype

    def forward(self, z, t, encoder_hidden_states=None, return_dict=False):
        a = self.a[int(t)]
        eps = (z - a.sqrt() * self.x0) / (1 - a).sqrt()
        return (eps if self.kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * self.x0,)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_round_trip_honours_prediction_type(kind):
    from inversion.common import scheduler_pair
    from inversion.ddim import ddim_pivot

    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    errors = {}
    for assumed in ("epsilon", "v_prediction"):
        forward, inverse = scheduler_pair({**SD_SCHEDULE, "prediction_type": assumed}, 50)
        oracle = _Oracle(x0, kind, forward.alphas_cumprod)
        z = ddim_pivot(oracle, inverse, x0, torch.zeros(1, 77, 8))[-1]
        for t in forward.timesteps:
            z = forward.step(oracle(z, t)[0], t, z).prev_sample
        errors[assumed] = (z - x0).pow(2).mean().sqrt().item()
    wrong = "epsilon" if kind == "v_prediction" else "v_prediction"
    assert errors[kind] < 0.005 and errors[wrong] > 0.01, errors


def test_v_prediction_pipeline_inverts_with_its_type():
    from inversion import DDIMInversionConfig, invert
    from inversion.common import schedulers

    pipe = build_tiny_pipe(prediction_type="v_prediction")
    forward, inverse = schedulers(pipe, 5)
    assert forward.config.prediction_type == inverse.config.prediction_type == "v_prediction"
    inv = invert(pipe, _image(), "a red circle", "ddim", DDIMInversionConfig(num_inference_steps=5))
    assert inv.scheduler_config["prediction_type"] == "v_prediction"


def test_null_text_defaults_are_the_notebook_s():
    from inversion import NullTextConfig

    c = NullTextConfig()
    assert (
        c.num_inference_steps,
        c.guidance_scale,
        c.num_inner_steps,
        c.early_stop_epsilon,
        c.early_stop_slope,
        c.learning_rate,
        c.lr_decay_steps,
    ) == (
        50,
        7.5,
        10,
        1e-5,
        2e-5,
        1e-2,
        100.0,
    )


def test_null_text_runs_fp32_and_computes_eps_c_once_per_step():
    from inversion import NullTextConfig, invert
    from inversion.common import embed

    pipe = build_tiny_pipe().to(torch.float16)
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    cond = embed(pipe, "a red circle")
    calls = []

    def spy(module, args, kwargs):
        ctx = kwargs["encoder_hidden_states"]
        calls.append((args[0].dtype, int((ctx.float() - cond).abs().amax(dim=(1, 2)).lt(1e-6).sum())))

    pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)  # the fp32 copy inherits the hook
    steps, inner = 4, 3
    inv = invert(
        pipe, _image(), "a red circle", "null-text", NullTextConfig(num_inference_steps=steps, num_inner_steps=inner, null_init="empty")
    )
    assert all(dtype == torch.float32 for dtype, _ in calls)
    assert sum(n for _, n in calls) == 2 * steps  # the pivot's N, and eps_c once per optimised step
    assert inv.null_embeddings.dtype == torch.float32 and inv.null_embeddings.shape == (steps, 77, 32)
    assert pipe.unet.dtype == torch.float16
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())
    assert all(p.grad is None for p in pipe.unet.parameters())
    assert inv.stats["unet_backward"] == sum(inv.stats["inner_steps"]) > 0


def test_null_text_early_stop_and_warm_start(tiny_pipe):
    from inversion import NullTextConfig, invert

    # with a huge early-stop threshold nothing is optimised: the embedding stays at its start, the source prompt's
    cfg = NullTextConfig(num_inference_steps=4, early_stop_epsilon=1e9)
    inv = invert(tiny_pipe, _image(), "a red circle", "null-text", cfg)
    from inversion.common import embed

    assert inv.stats["inner_steps"] == [0, 0, 0, 0] and inv.stats["unet_backward"] == 0
    assert torch.equal(inv.null_embeddings, embed(tiny_pipe, "a red circle").expand(4, -1, -1))
    # a tiny threshold: every step uses all inner steps, and each warm-starts from the previous one
    cfg = NullTextConfig(num_inference_steps=3, num_inner_steps=2, early_stop_epsilon=0.0, early_stop_slope=0.0, null_init="empty")
    inv = invert(tiny_pipe, _image(), "a red circle", "null-text", cfg)
    assert inv.stats["inner_steps"] == [2, 2, 2]
    assert not torch.equal(inv.null_embeddings[0], inv.null_embeddings[1])


def test_direct_reconstructs_the_vae_ceiling(tiny_pipe):
    from inversion import DirectInversionConfig, invert, reconstruct
    from studio.latents import decode as decode_latents

    inv = invert(tiny_pipe, _image(), "a red circle", "direct", DirectInversionConfig(num_inference_steps=6))
    _, latents = reconstruct(tiny_pipe, inv)
    assert torch.allclose(latents, inv.image_latent, atol=1e-6)
    ceiling = decode_latents(tiny_pipe, inv.image_latent)
    assert torch.allclose(decode_latents(tiny_pipe, latents), ceiling, atol=1e-5)


def test_negative_prompt_replays_the_w1_trajectory(tiny_pipe):
    from inversion import NegativePromptConfig, invert, reconstruct
    from studio.sampling import sample

    inv = invert(tiny_pipe, _image(), "a red circle", "negative-prompt", NegativePromptConfig(num_inference_steps=6))
    _, latents = reconstruct(tiny_pipe, inv)
    w1 = sample(tiny_pipe, "a red circle", guidance_scale=1.0, num_inference_steps=6, latents=inv.latent_T, output_type="latent").latents
    assert torch.allclose(latents, w1, atol=1e-5)


def test_inversion_file_round_trip(tiny_pipe, tmp_path):
    from inversion import InversionResult, NullTextConfig, edit, invert

    cfg = NullTextConfig(num_inference_steps=6, num_inner_steps=2)
    inv = invert(tiny_pipe, _image(), "a red circle", "null-text", cfg)
    path = inv.save(tmp_path / "inv.safetensors")
    loaded = InversionResult.load(path)
    assert torch.equal(loaded.null_embeddings, inv.null_embeddings) and torch.equal(loaded.latent_T, inv.latent_T)
    assert (loaded.method, loaded.prompt, loaded.num_inference_steps, loaded.guidance_scale) == ("null-text", "a red circle", 6, 7.5)
    assert loaded.config == inv.config and loaded.scheduler_config == inv.scheduler_config
    assert path.stat().st_size < 6 * 77 * 32 * 4 + 8_000  # embeddings, two latents, metadata
    a = edit(tiny_pipe, None, "a red circle", "a blue circle", inversion=inv)
    b = edit(tiny_pipe, None, "a red circle", "a blue circle", inversion=loaded)
    assert np.array_equal(np.asarray(a.edit), np.asarray(b.edit))
    with pytest.raises(ValueError, match="source prompt 'a red circle'"):
        edit(tiny_pipe, None, "a red disc", "a blue disc", inversion=loaded)
    with pytest.raises(ValueError, match="different model"):
        edit(build_tiny_pipe(seed=1), None, "a red circle", "a blue circle", inversion=loaded)
    with pytest.raises(ValueError, match="method 'null-text', not 'direct'"):
        edit(tiny_pipe, None, "a red circle", "a blue circle", "direct", inversion=loaded)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match="not an inversion"):
        InversionResult.load(other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        InversionResult.load(tmp_path / "junk.safetensors")


def test_direct_file_keeps_the_pivot(tiny_pipe, tmp_path):
    from inversion import DirectInversionConfig, InversionResult, invert

    inv = invert(tiny_pipe, _image(), "a red circle", "direct", DirectInversionConfig(num_inference_steps=5))
    loaded = InversionResult.load(inv.save(tmp_path / "d.safetensors"))
    assert torch.equal(loaded.pivot, inv.pivot) and loaded.pivot.shape == (6, 1, 4, 8, 8)


def test_any_image_kind_and_size(tiny_pipe, tmp_path):
    from PIL import Image

    from inversion.common import prepare_image

    rgb = Image.fromarray(_image()).resize((90, 60))
    for mode in ("L", "RGBA", "P", "I;16"):
        path = tmp_path / f"im-{mode.replace(';', '')}.png"
        (rgb.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257))).save(path)
        image, note = prepare_image(tiny_pipe, path)
        assert image.size == (32, 32) and image.mode == "RGB"
    _, note = prepare_image(tiny_pipe, rgb, fit="crop")
    assert note == "image 90x60, centre-cropped to 60x60, resized to 32x32 (the model's resolution)"
    padded, note = prepare_image(tiny_pipe, rgb, fit="pad")
    assert "padded to 90x90" in note
    with pytest.raises(ValueError, match="unknown fit"):
        prepare_image(tiny_pipe, rgb, fit="stretch")


def test_bad_images_give_clear_errors(tiny_pipe, tmp_path):
    from PIL import Image

    from inversion import edit
    from studio.images import ImageError

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageError, match="not a readable image"):
        edit(tiny_pipe, corrupt, "a red circle", "a blue circle", "ddim")
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 9000)).save(huge)  # 81 MP, a small file
    with pytest.raises(ImageError, match="over the 64 MP limit"):
        edit(tiny_pipe, huge, "a red circle", "a blue circle", "ddim")
    with pytest.raises(ImageError, match="no image file"):
        edit(tiny_pipe, tmp_path / "missing.png", "a red circle", "a blue circle", "ddim")
    with pytest.raises(ValueError, match="tokens; CLIP takes at most 77"):
        edit(tiny_pipe, _image(), "a red circle " * 30, "a blue circle", "ddim")


def test_cancel_and_callback(tiny_pipe):
    from inversion import NullTextConfig, edit
    from studio.progress import is_event
    from studio.sampling import Cancelled

    seen = []
    edit(
        tiny_pipe,
        _image(),
        "a red circle",
        "a blue circle",
        "null-text",
        inversion_config=NullTextConfig(num_inference_steps=3, num_inner_steps=1),
        callback=seen.append,
    )
    assert all(is_event(info) for info in seen)
    stages = [info["stage"] for info in seen]
    assert stages == ["null-text"] * 6 + ["edit"] * 3
    assert [info["phase"] for info in seen[:6]] == ["pivot"] * 3 + ["null-text"] * 3
    assert [(info["step"], info["total"]) for info in seen] == [(k, 6) for k in range(1, 7)] + [(k, 3) for k in range(1, 4)]
    assert {"i", "t", "x", "loss", "inner_steps"} <= set(seen[3]) and {"i", "t", "x", "denoised"} <= set(seen[-1])
    cancel = threading.Event()

    def stop_early(info):
        if len(seen) >= 11:
            cancel.set()
        seen.append(info)

    with pytest.raises(Cancelled):
        edit(
            tiny_pipe,
            _image(),
            "a red circle",
            "a blue circle",
            "null-text",
            inversion_config=NullTextConfig(num_inference_steps=3),
            callback=stop_early,
            cancel=cancel,
        )
