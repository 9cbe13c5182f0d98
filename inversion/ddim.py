"""DDIM inversion (Song et al., ICLR 2021; Dhariwal & Nichol 2021): run the deterministic DDIM
sampler backwards, from the image's latent to noise.

With guidance w = 1 (the source prompt's conditional prediction only) this trajectory is the
*pivot* of null-text inversion (Mokady et al., CVPR 2023), of negative-prompt inversion and of
Direct Inversion: every other method in this package starts from it.

Conventions are diffusers' `DDIMInverseScheduler` (used here directly): timesteps 1, 21, ..., 981
for 50 steps; step i evaluates the UNet at `t_i` on the latent at the level of `t_i - 20` (the
approximation eps(z_{t-1}, t) ~ eps(z_t, t) that every DDIM inversion makes), and the first level
is alpha-bar_0 when `set_alpha_to_one` is off (SD). The scheduler's `prediction_type` (epsilon or
v_prediction) is honoured by both schedulers, so SD 2.x v-models invert correctly.

As an editing method, "ddim" is the baseline of the papers: the w = 1 pivot, then sampling with
CFG at 7.5 and the empty prompt as the unconditional embedding; the reconstruction drifts because
the guided trajectory is not the one that was inverted (prompt-to-prompt issue #27).
"""

from dataclasses import dataclass

import torch

from studio.latents import encode
from studio.progress import event
from studio.sampling import Cancelled, is_cancelled

from .common import embed, make_result, new_counter, prepare_image, progress_bar, schedulers, unet_eps
from .result import InversionResult


@dataclass
class DDIMInversionConfig:
    """DDIM inversion; the defaults are the NTI paper's pivot."""

    num_inference_steps: int = 50  # N, as the NTI notebook
    guidance_scale: float = 7.5  # the guidance of the edit (and of the reconstruction) that follows
    inversion_guidance: float = 1.0  # w during inversion; 1 = the pivot (higher inverts worse, issue #27)


@torch.no_grad()
def ddim_pivot(
    unet,
    inverse,
    z0: torch.Tensor,
    cond: torch.Tensor,
    *,
    uncond=None,
    guidance: float = 1.0,
    callback=None,
    cancel=None,
    progress=False,
    counter=None,
) -> torch.Tensor:
    """The inverse DDIM trajectory `(N+1, 1, 4, h, w)` in fp32: z*_0 = z0, ..., z*_N = z*_T.

    `inverse` is a `DDIMInverseScheduler` after `set_timesteps`; `cond` `(1, 77, D)`; `uncond`
    (the empty prompt's embedding) is needed only when `guidance` > 1. Runs in the UNet's dtype.
    """
    dtype = next(unet.parameters()).dtype
    z = z0.to(dtype)
    cond = cond.to(dtype)
    trajectory = [z0.float()]
    steps = list(inverse.timesteps)
    for i, t in enumerate(progress_bar(steps, progress, "DDIM inversion")):
        if is_cancelled(cancel):
            raise Cancelled(f"DDIM inversion cancelled at step {i} of {len(steps)}")
        if guidance > 1.0:
            eps_u, eps_c = unet_eps(unet, torch.cat([z, z]), t, torch.cat([uncond.to(dtype), cond])).chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        else:
            eps = unet_eps(unet, z, t, cond)
        if counter is not None:
            counter["unet_forward"] += 2 if guidance > 1.0 else 1
        z = inverse.step(eps, t, z).prev_sample
        trajectory.append(z.float())
        if callback is not None:
            callback(event("ddim", i + 1, len(steps), i=i, t=int(t), x=z))
    return torch.stack(trajectory)


def invert(
    pipe, image, prompt: str, config: DDIMInversionConfig | None = None, *, fit="crop", callback=None, cancel=None, progress=False
) -> InversionResult:
    """Invert `image` (any image `studio.images.load_image` takes) with DDIM inversion under `prompt`."""
    cfg = config or DDIMInversionConfig()
    counter = new_counter()
    image, note = prepare_image(pipe, image, fit)
    _, inverse = schedulers(pipe, cfg.num_inference_steps)
    z0 = encode(pipe.vae, image)
    uncond = embed(pipe, "") if cfg.inversion_guidance > 1.0 else None
    pivot = ddim_pivot(
        pipe.unet,
        inverse,
        z0,
        embed(pipe, prompt),
        uncond=uncond,
        guidance=cfg.inversion_guidance,
        callback=callback,
        cancel=cancel,
        progress=progress,
        counter=counter,
    )
    return make_result(pipe, "ddim", prompt, cfg, z0, pivot[-1], fit=fit, note=note, counter=counter)
