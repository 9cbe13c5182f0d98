"""What every inversion method shares: the image going in, the latent it becomes, the two DDIM
schedulers (forward and inverse) with one timestep map, the text embeddings, an fp32 UNet.

Timestep map (diffusers' conventions, the same as the prompt-to-prompt notebook's):

    forward  DDIMScheduler.timesteps         981, 961, ..., 1     (50 steps, SD's steps_offset=1)
    inverse  DDIMInverseScheduler.timesteps  1, 21, ..., 981

Inverse step i evaluates the UNet at timestep `t_i` on the latent at the noise level of `t_i - 20`
(level -19 means alpha-bar_0, the scheduler's `initial_alpha_cumprod` when `set_alpha_to_one` is
off, as in SD) and moves it to the level of `t_i`. So the pivot trajectory `z*_0 .. z*_N` has
`z*_k` at the level of inverse timestep `k - 1`, and forward step i (timestep `t = 981 - 20 i`)
goes from `z*_{N-i}` towards `z*_{N-i-1}`.
"""

import copy
import json
import time
import warnings
from dataclasses import asdict

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from PIL import Image

from studio.images import fit_image, load_image
from studio.latents import resolution
from studio.sampling import check_prompt, ddim_scheduler, encode_prompts

from .result import InversionResult


FIT_MODES = ("crop", "pad")


def prepare_image(pipe, image, fit: str = "crop") -> tuple[Image.Image, str]:
    """Any image (path, file, PIL, array) -> RGB at the model's resolution, and a sentence that says what was done.

    `fit="crop"` centre-crops to a square, `fit="pad"` pads to a square with the border's mean colour;
    then the square is resized (Lanczos) to the model's resolution. Bad files raise `studio.images.ImageError`.
    (The notebook's `load_512` clamps the top offset with the left one and keeps `[:, :, :3]` without
    converting to RGB, so grayscale inputs fail; `studio.images.load_image` converts every mode.)
    """
    if fit not in FIT_MODES:
        raise ValueError(f"unknown fit {fit!r}; use 'crop' (centre crop) or 'pad' (pad to a square)")
    img = load_image(image)
    size = resolution(pipe)
    w, h = img.size
    out = fit_image(img, size, mode=fit)
    side = min(w, h) if fit == "crop" else max(w, h)
    if 2 * side < size:
        warnings.warn(
            f"the image is {w}x{h}: its {side}x{side} square is upscaled to {size}x{size}, so the model sees a blurred image", stacklevel=2
        )
    if w == h:
        how = f"{w}x{h}"
    else:
        s = min(w, h) if fit == "crop" else max(w, h)
        how = f"{w}x{h}, {'centre-cropped' if fit == 'crop' else 'padded'} to {s}x{s}"
    note = f"image {how}" + (
        f", resized to {size}x{size} (the model's resolution)" if (w, h) != (size, size) else " (the model's resolution)"
    )
    return out, note


# the latent space is studio.latents' (one implementation); these names stay for the app while it moves


@torch.no_grad()
def embed(pipe, prompt: str) -> torch.Tensor:
    """CLIP embedding `(1, 77, D)` of one prompt, in fp32 (raises ValueError over 77 tokens)."""
    check_prompt(pipe.tokenizer, prompt)
    return encode_prompts(pipe, [prompt]).float()


def schedulers(pipe, num_inference_steps: int) -> tuple[DDIMScheduler, DDIMInverseScheduler]:
    """A forward DDIM scheduler and its inverse, with the pipeline's noise schedule and prediction type.

    Raises if their timesteps do not mirror each other (DDIMInverseScheduler knows only the
    'leading' and 'trailing' spacings).
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    forward = ddim_scheduler(pipe)
    return scheduler_pair(forward.config, num_inference_steps, device=pipe.unet.device)


def scheduler_pair(config, num_inference_steps: int, device=None) -> tuple[DDIMScheduler, DDIMInverseScheduler]:
    forward = DDIMScheduler.from_config(config)
    spacing = forward.config.timestep_spacing
    if spacing not in ("leading", "trailing"):
        raise ValueError(
            f"timestep_spacing {spacing!r} cannot be inverted with DDIM here; use a scheduler config with 'leading' or 'trailing'"
        )
    inverse = DDIMInverseScheduler.from_config(config)
    forward.set_timesteps(num_inference_steps, device=device)
    inverse.set_timesteps(num_inference_steps, device=device)
    if forward.timesteps.flip(0).tolist() != inverse.timesteps.tolist():
        raise ValueError(
            f"the forward and inverse DDIM timesteps do not mirror each other for {num_inference_steps} steps "
            f"({forward.timesteps[:3].tolist()}... vs {inverse.timesteps[:3].tolist()}...); try 50 steps"
        )
    return forward, inverse


def scheduler_config(pipe) -> dict:
    """The pipeline's DDIM config as plain JSON-able data (stored with every inversion)."""
    return json.loads(json.dumps(dict(ddim_scheduler(pipe).config)))


def fp32_unet(pipe):
    """The pipeline's UNet in fp32: the UNet itself when it already is, otherwise an fp32 copy (the pipeline is untouched).

    Null-text optimisation fails in fp16 (diffusers PR #6329), so it always runs in fp32; the copy
    costs the UNet's fp32 size in memory (3.4 GB for SD v1) for the duration of the call.
    """
    unet = pipe.unet
    if unet.dtype == torch.float32:
        return unet
    return copy.deepcopy(unet).float().eval()


def fingerprint(pipe) -> list:
    """A short identity of the model (UNet and text encoder), to catch an inversion loaded into another model."""
    u = pipe.unet.conv_in.weight.detach().float()
    e = pipe.text_encoder.get_input_embeddings().weight.detach()[:1000].float()
    return [
        int(pipe.unet.config.cross_attention_dim),
        int(pipe.unet.config.sample_size),
        u.abs().sum().item(),
        u.square().sum().item(),
        e.abs().sum().item(),
    ]


def same_model(a: list, b: list) -> bool:
    """Fingerprints match (to fp16 precision, so fp16 and fp32 copies of one model agree)."""
    if len(a) != len(b) or a[:2] != b[:2]:
        return False
    return all(abs(x - y) <= 2e-3 * max(abs(x), abs(y), 1e-6) for x, y in zip(a[2:], b[2:]))


def unet_eps(unet, latents, t, context, **kwargs) -> torch.Tensor:
    return unet(latents, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]


def restage(callback, stage: str, offset: int = 0, total: int | None = None, **extras):
    """A callback that files a sub-job's events under `stage` (the inverter's name), its steps counted
    from `offset` out of `total`: null-text's pivot is steps 1..N of 2N, its optimisation N+1..2N."""
    if callback is None:
        return None

    def inner(info):
        callback({**info, **extras, "stage": stage, "step": offset + info["step"], "total": total if total is not None else info["total"]})

    return inner


def progress_bar(iterable, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def new_counter() -> dict:
    return {"unet_forward": 0, "unet_backward": 0, "start": time.perf_counter()}


def make_result(pipe, method: str, prompt: str, cfg, z0, latent_T, *, fit: str, note: str, counter: dict, **extra) -> InversionResult:
    """Package an inversion: the method's config, the scheduler, the image size, the fingerprint and the counts."""
    stats = {k: v for k, v in counter.items() if k != "start"}
    stats["seconds"] = time.perf_counter() - counter["start"]
    stats["image"] = note
    return InversionResult(
        method=method,
        prompt=prompt,
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        latent_T=latent_T.float().clone(),
        image_latent=z0.float().clone(),
        scheduler_config=scheduler_config(pipe),
        config=asdict(cfg),
        resolution=resolution(pipe),
        fit=fit,
        fingerprint=fingerprint(pipe),
        stats=stats,
        **extra,
    )
