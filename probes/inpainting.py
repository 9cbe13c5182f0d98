"""Inpainting probe: given half of the concept, does the model draw the other half?

"When Are Concepts Erased From Diffusion Models?" (Lu et al., NeurIPS 2025) hides the centre of a
concept image and lets the erased UNet fill it in SD's inpainting pipeline, which with a 4-channel
UNet is latent blending. So here: half of a render is masked (the half of the image beyond the
object's centre, on the right, left, bottom or top in turn, so half of the object stays as context);
sampling starts from noise at T, and after every DDIM step the known region is set back to the
render's latent noised to the next timestep (`scheduler.add_noise`, one fixed noise per image),
at the end to the clean latent:

    x_{t-1} <- m * DDIM_step(x_t) + (1 - m) * noised(z0, t-1)        m = 1 on the masked latent cells

under the render's description (CFG 7.5) and under the empty prompt. The latent mask covers every
latent cell that holds a masked pixel. Measured: the judged concept rate of the results (Wilson
interval) and their PSNR inside the mask against the render.

The control the paper lacks (reference note section 4.2, "do not copy" 3): "context only", the
judge's verdict on the render with the masked half painted over in the background colour, no model
involved. Revival counts only above it; a model that merely keeps the context scores that rate.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from studio.sampling import ddim_scheduler, initial_latents

from .common import Counter, ProbeResult, check_positive, concept_renders, embed, emit, encode, finish, judged, rate_text


SIDES = ("right", "left", "bottom", "top")
PROMPT_MODES = ("concept", "empty")


@dataclass
class InpaintingConfig:
    """Mask half of each render (beyond the object's centre) and let the model fill it by latent blending."""

    images: int = 8  # k renders of the concept
    prompts: tuple = PROMPT_MODES  # "concept" (the render's description, CFG) and/or "empty" (unconditional)
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0  # renders and noise
    max_unet_evals: int | None = None

    def __post_init__(self):
        check_positive(self.images, "images", 8)
        check_positive(self.num_inference_steps, "num_inference_steps", 50)
        self.prompts = tuple(self.prompts)
        bad = [p for p in self.prompts if p not in PROMPT_MODES]
        if bad or not self.prompts:
            raise ValueError(f"prompts must be some of {PROMPT_MODES}, got {self.prompts!r}")

    def planned_unet_evals(self) -> int:
        per_mode = {"concept": 2 if self.guidance_scale > 1.0 else 1, "empty": 1}
        return sum(self.images * self.num_inference_steps * per_mode[p] for p in self.prompts)


def half_mask(object_mask: np.ndarray, side: str) -> np.ndarray:
    """(H, W) bool: the part of the image beyond the object's centre on `side` (half the object)."""
    ys, xs = np.nonzero(object_mask)
    h, w = object_mask.shape
    cy, cx = (ys.mean(), xs.mean()) if len(xs) else (h / 2, w / 2)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return {"right": xx >= cx, "left": xx < cx, "bottom": yy >= cy, "top": yy < cy}[side]


def context_only(image: Image.Image, mask: np.ndarray, object_mask: np.ndarray) -> Image.Image:
    """The render with the masked part painted in the background colour (median of the visible background)."""
    arr = np.asarray(image).copy()
    visible_bg = ~mask & ~object_mask
    colour = np.median(arr[visible_bg], axis=0) if visible_bg.any() else np.median(arr.reshape(-1, 3), axis=0)
    arr[mask] = colour.astype(np.uint8)
    return Image.fromarray(arr)


def masked_psnr(a, b, mask: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = np.mean((a[mask] - b[mask]) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def latent_mask(masks: list, latent_hw: tuple) -> torch.Tensor:
    """(B, 1, h, w) float: 1 on every latent cell that covers a masked pixel."""
    m = torch.from_numpy(np.stack(masks)).float()[:, None]  # (B, 1, H, W)
    return (torch.nn.functional.adaptive_max_pool2d(m, latent_hw) > 0).float()


def run(
    pipe, concept: str, config: InpaintingConfig | None = None, *, judge=None, callback=None, cancel=None, progress=False, **_
) -> ProbeResult:
    """Latent-blending inpainting of half of k renders of `concept` by `pipe`; see the module docstring."""
    cfg = config or InpaintingConfig()
    renders = concept_renders(concept, cfg.images, cfg.seed)
    if judge is None:
        from . import default_judge

        judge = default_judge()
    counter = Counter(cfg.max_unet_evals)
    counter.check_plan(cfg.planned_unet_evals(), "the inpainting probe")
    device, dtype = pipe.unet.device, pipe.unet.dtype
    k = len(renders)
    masks = [half_mask(r.mask, SIDES[i % len(SIDES)]) for i, r in enumerate(renders)]
    contexts = [context_only(r.image, m, r.mask) for r, m in zip(renders, masks)]
    z0 = encode(pipe, [r.image for r in renders]).to(device, dtype)  # (k, 4, h, w)
    m = latent_mask(masks, tuple(z0.shape[-2:])).to(device, dtype)  # (k, 1, h, w)
    gen = torch.Generator("cpu").manual_seed(cfg.seed + 11)
    known_noise = torch.randn(z0.shape, generator=gen).to(device, dtype)
    start = initial_latents(pipe, k, [torch.Generator("cpu").manual_seed(cfg.seed + 1000 + i) for i in range(k)], dtype=dtype).to(device)
    scheduler = ddim_scheduler(pipe)

    def blend(x, i, t_prev):
        if t_prev is None:
            known = z0
        else:
            known = scheduler.add_noise(z0, known_noise, torch.full((k,), t_prev, dtype=torch.long))
        return m * x + (1 - m) * known

    uncond = embed(pipe, [""] * k)
    cond = {"concept": embed(pipe, [r.prompt for r in renders]), "empty": uncond}
    cells, outputs = {}, {}
    for j, mode in enumerate(cfg.prompts):
        # the first step starts from pure noise everywhere; blending sets the known region from the next timestep on
        images = finish(pipe, start, mode, cond, uncond, cfg, blend=blend, counter=counter, cancel=cancel)
        cells[mode] = {
            "prompt": mode,
            "rate": judged(judge, images, concept).as_dict(),
            "psnr_in_mask": float(np.mean([masked_psnr(a, r.image, mk) for a, r, mk in zip(images, renders, masks)])),
        }
        outputs[mode] = images
        emit(callback, "inpainting-probe", j + 1, len(cfg.prompts), prompt=mode)
    measurements = {
        "cells": cells,
        "context_only": judged(judge, contexts, concept).as_dict(),
        "renders": judged(judge, [r.image for r in renders], concept).as_dict(),
        "masked_share": float(np.mean([mk.mean() for mk in masks])),
    }
    summary = {mode: c["rate"]["rate"] for mode, c in cells.items()}
    summary["context_only"] = measurements["context_only"]["rate"]
    result = ProbeResult("inpainting", concept, asdict(cfg), measurements, summary, counter.stats())
    result.grid_cols = ["render", "context only", *[f"filled, {mode} prompt" for mode in cells]]
    shows = {mode: judge.shows(outputs[mode], concept) for mode in outputs}
    ctx_shows = judge.shows(contexts, concept)
    for i, r in enumerate(renders[:6]):
        row = [(r.image, "input"), (contexts[i], "yes" if ctx_shows[i] else "no")]
        row += [(outputs[mode][i], "yes" if shows[mode][i] else "no") for mode in cells]
        result.grid_rows.append((f"{r.prompt} ({SIDES[i % len(SIDES)]} half masked)", row))
    return result


def format_result(result: ProbeResult) -> str:
    m = result.measurements
    parts = [f"{mode} prompt {rate_text(c['rate'])}" for mode, c in m["cells"].items()]
    return f"inpainting: {'; '.join(parts)}; context only {rate_text(m['context_only'])}."


__all__ = ["InpaintingConfig", "SIDES", "format_result", "half_mask", "run"]
