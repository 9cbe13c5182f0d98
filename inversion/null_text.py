"""Null-text inversion (Mokady, Hertz, Aberman, Pritch, Cohen-Or: "Null-text Inversion for Editing
Real Images using Guided Diffusion Models", CVPR 2023), as in the paper and its official notebook
(google/prompt-to-prompt, `null_text_w_ptp.ipynb`).

Pivotal inversion: the w = 1 DDIM inversion of the image under the source prompt is the pivot
z*_0 .. z*_T; then, for each forward step i (timestep t, from T down), the unconditional
("null-text") embedding is optimised so that one guided DDIM step (w = 7.5) from the current
latent lands on the pivot's z*_{t-1}:

    loss = || DDIM_step(eps_u(null) + w (eps_c - eps_u(null)), t, z_t) - z*_{t-1} ||^2   (mean)

with the notebook's defaults: 50 steps, w = 7.5, at most 10 Adam steps per timestep (a new Adam
per timestep, default betas, lr 1e-2 * (1 - i/100)), early stop when loss < 1e-5 + i * 2e-5, the
embedding warm-started from the previous timestep's, the conditional prediction eps_c computed once
per timestep. The edit then uses embedding i at step i for the source and the target branch alike.
Everything runs in fp32 (an fp32 copy of the UNet when the pipeline is fp16: fp16 fails to
optimise, diffusers PR #6329).

Deliberate differences from the official code (all of them make it faster; the benchmark
`benchmarks/editing_table.py` measures both side by side):

* `null_init="source"` (default): the first timestep's embedding starts from the *source prompt's*
  embedding rather than the empty prompt's. With null = cond the guided step equals the w = 1 step
  that built the pivot, so the loss starts at the (small) inversion error instead of the guidance
  error, and most timesteps pass the early-stop test before any update. This is negative-prompt
  inversion's observation (Miyake et al. 2023) used as a starting point. `null_init="empty"` is the
  official start.
* The early-stop test runs *before* the Adam step: the official loop steps once more after the
  loss is already small enough. Stopping first keeps the embedding whose loss was checked, so its
  guided step is the next latent and the separate batched CFG pass that the official loop runs to
  advance is not needed.
* Gradients are taken only for the embedding (`torch.autograd.grad`), never for the UNet weights,
  which the official loop leaves trainable, so each backward pass also computes (and accumulates)
  weight gradients; the shared pipeline's `requires_grad` flags are not touched.
* When the previous timestep needed no update, the first evaluation of a timestep runs without a
  graph (most timesteps then stop there) and batches eps_c with the embedding's eps_u in one UNet
  call, or makes just one call while the embedding still is the source prompt's (then eps_u = eps_c).

What the toy world shows about editing with these embeddings (benchmarks/editing_study.md, one image so far): the
optimised nulls end up read by the UNet as the source prompt. From `null_init="source"` they *are*
the source prompt's embedding on most steps, so null-text edits equal negative-prompt edits; from the
official "" start they travel as far from "" as the source prompt lies (0.9-1.0 of that distance
after the first 15 of 50 steps) and the UNet's prediction with them sits 0.12-0.38 of the way from
the source prompt's to the empty prompt's. That is what exact reconstruction asks for (a guided
step that lands on the w = 1 pivot needs eps_u = eps_c at the source latent), and it makes the
shared null of the edit a negative prompt of the source for the targets. The source branch of an
edit reconstructs exactly as the inversion alone (0.00 dB, latents within 3e-6); see
`EditConfig.target_null` for the targets.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from studio.latents import encode
from studio.progress import event
from studio.sampling import Cancelled, is_cancelled

from .common import embed, fp32_unet, restage, make_result, new_counter, prepare_image, progress_bar, schedulers, unet_eps
from .ddim import ddim_pivot
from .result import InversionResult


@dataclass
class NullTextConfig:
    """Null-text inversion; defaults from the official notebook except `null_init` (see the module docstring)."""

    num_inference_steps: int = 50  # DDIM steps (NUM_DDIM_STEPS)
    guidance_scale: float = 7.5  # w of the guided step that the embeddings are optimised for (GUIDANCE_SCALE)
    num_inner_steps: int = 10  # at most this many Adam steps per timestep
    early_stop_epsilon: float = 1e-5  # stop a timestep when loss < early_stop_epsilon + i * early_stop_slope
    early_stop_slope: float = 2e-5
    learning_rate: float = 1e-2  # Adam lr at timestep i: learning_rate * (1 - i / lr_decay_steps)
    lr_decay_steps: float = 100.0
    null_init: str = "source"  # "source" (ours: the source prompt's embedding) or "empty" (official: the "" embedding)


def invert(
    pipe, image, prompt: str, config: NullTextConfig | None = None, *, fit="crop", callback=None, cancel=None, progress=False
) -> InversionResult:
    """Null-text inversion of `image` under `prompt`. Callback events (`studio.progress`), stage
    "null-text", steps 1..2N: the pivot's N (phase "pivot"), then `{"i", "t", "x", "loss",
    "inner_steps"}` once per optimised timestep (phase "null-text")."""
    cfg = config or NullTextConfig()
    if cfg.null_init not in ("source", "empty"):
        raise ValueError(f"null_init must be 'source' or 'empty', got {cfg.null_init!r}")
    counter = new_counter()
    image, note = prepare_image(pipe, image, fit)
    unet = fp32_unet(pipe)
    forward, inverse = schedulers(pipe, cfg.num_inference_steps)
    z0 = encode(pipe.vae, image)
    cond = embed(pipe, prompt)  # (1, 77, D) fp32
    empty = embed(pipe, "")
    n = cfg.num_inference_steps
    pivot_cb, optimise_cb = (
        restage(callback, "null-text", 0, 2 * n, phase="pivot"),
        restage(callback, "null-text", n, 2 * n, phase="null-text"),
    )
    pivot = ddim_pivot(unet, inverse, z0, cond, callback=pivot_cb, cancel=cancel, progress=progress, counter=counter)
    null = cond if cfg.null_init == "source" else empty
    nulls, losses, inner = optimise_null_text(
        unet, forward, pivot, cond, null, cfg, callback=optimise_cb, cancel=cancel, progress=progress, counter=counter
    )
    counter["losses"] = losses
    counter["inner_steps"] = inner
    return make_result(pipe, "null-text", prompt, cfg, z0, pivot[-1], fit=fit, note=note, counter=counter, null_embeddings=nulls)


def optimise_null_text(
    unet, scheduler, pivot, cond, null, cfg: NullTextConfig, *, callback=None, cancel=None, progress=False, counter=None
):
    """Per-timestep optimisation of the null embedding around the pivot `(N+1, 1, 4, h, w)`.

    `scheduler` is a `DDIMScheduler` after `set_timesteps(N)`; `cond`, `null` `(1, 77, D)` fp32.
    Returns (embeddings `(N, 77, D)`, final loss per timestep, Adam steps per timestep).
    """
    counter = counter if counter is not None else {"unet_forward": 0, "unet_backward": 0}
    n = cfg.num_inference_steps
    w = cfg.guidance_scale
    latent = pivot[-1]  # (1, 4, h, w)
    null = null.detach().clone()
    nulls, losses, inner = [], [], []
    optimised_last = True  # whether the previous timestep took an Adam step
    steps = list(scheduler.timesteps)
    for i, t in enumerate(progress_bar(steps, progress, "null-text inversion")):
        if is_cancelled(cancel):
            raise Cancelled(f"null-text inversion cancelled at step {i} of {n}")
        target = pivot[n - 1 - i]  # z*_{t-1}
        threshold = cfg.early_stop_epsilon + i * cfg.early_stop_slope
        null = null.detach().requires_grad_(cfg.num_inner_steps > 0)
        optimizer = torch.optim.Adam([null], lr=cfg.learning_rate * (1.0 - i / cfg.lr_decay_steps))

        def guided_step(eps_u):
            prev = scheduler.step(eps_u + w * (eps_c - eps_u), t, latent).prev_sample
            return prev, F.mse_loss(prev, target)

        # eps_c once per timestep. The first check runs without a graph when the previous timestep
        # needed no update (the usual case from the source start), with one otherwise.
        has_graph = optimised_last and cfg.num_inner_steps > 0
        with torch.no_grad():
            if torch.equal(null, cond):  # null = cond: eps_u = eps_c, one evaluation
                eps_c = eps_u = unet_eps(unet, latent, t, cond)
                counter["unet_forward"] += 1
                has_graph = False
            elif has_graph:
                eps_c = unet_eps(unet, latent, t, cond)
                counter["unet_forward"] += 1
            else:  # eps_c and eps_u in one call
                eps_c, eps_u = unet_eps(unet, torch.cat([latent, latent]), t, torch.cat([cond, null])).chunk(2)
                counter["unet_forward"] += 2
        if has_graph:
            eps_u = unet_eps(unet, latent, t, null)
            counter["unet_forward"] += 1
        with torch.set_grad_enabled(has_graph):
            prev, loss = guided_step(eps_u)
        j = 0
        while loss.item() >= threshold and j < cfg.num_inner_steps:
            if is_cancelled(cancel):
                raise Cancelled(f"null-text inversion cancelled at step {i} of {n}")
            if not has_graph:  # the same evaluation again, recorded for the gradient
                prev, loss = guided_step(unet_eps(unet, latent, t, null))
                counter["unet_forward"] += 1
            (grad,) = torch.autograd.grad(loss, null)
            counter["unet_backward"] += 1
            null.grad = grad
            optimizer.step()
            j += 1
            has_graph = j < cfg.num_inner_steps  # the last evaluation is only checked, never differentiated
            with torch.set_grad_enabled(has_graph):
                prev, loss = guided_step(unet_eps(unet, latent, t, null))
                counter["unet_forward"] += 1
        loss_value = loss.item()
        nulls.append(null.detach()[0].clone())
        losses.append(loss_value)
        inner.append(j)
        optimised_last = j > 0
        latent = prev.detach()
        if callback is not None:
            callback(event("null-text", i + 1, n, i=i, t=int(t), x=latent, loss=loss_value, inner_steps=j))
    return torch.stack(nulls), losses, inner
