"""Diffusion-completion probe: does the model finish a half-made image of the concept as the concept?

"When Are Concepts Erased From Diffusion Models?" (Lu et al., NeurIPS 2025): the base model starts a
trajectory and the erased model finishes it. Here the start is exact: a render of the concept,
encoded by the VAE and noised to a fraction `level` of the schedule (the DDIM timestep nearest to
level x T, with fresh Gaussian noise, `scheduler.add_noise`), then the model runs DDIM from that
timestep to the end, under the render's description (which names the concept; CFG 7.5) and under the
empty prompt (unconditional). Measured per (level, prompt): the judged concept rate of the finished
images (Wilson interval) and their PSNR against the render.

At a low level (0.25) every model mostly keeps what it was given; at a high one (0.75) little of
the image is left, so the rate says what the model itself makes of the concept. A guidance-based
erasure (the knowledge stays, only the prompt's pull is redirected) finishes the concept under the
empty prompt as the original does; a destruction-based one does not, like the oracle.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch

from studio.images import psnr
from studio.sampling import ddim_scheduler

from .common import (
    Counter,
    ProbeResult,
    check_level,
    check_positive,
    concept_renders,
    embed,
    emit,
    encode,
    finish,
    judged,
    rate_text,
    timestep_index,
)


PROMPT_MODES = ("concept", "empty")


@dataclass
class CompletionConfig:
    """Noise renders of the concept to `noise_levels` of the schedule and let the model finish them."""

    images: int = 8  # k renders of the concept
    noise_levels: tuple = (0.25, 0.5, 0.75)  # fractions of the schedule, each in (0, 1)
    prompts: tuple = PROMPT_MODES  # "concept" (the render's description, CFG) and/or "empty" (unconditional)
    num_inference_steps: int = 50  # DDIM steps of the full schedule; a level skips the first ones
    guidance_scale: float = 7.5
    seed: int = 0  # renders and noise
    max_unet_evals: int | None = None

    def __post_init__(self):
        check_positive(self.images, "images", 8)
        check_positive(self.num_inference_steps, "num_inference_steps", 50)
        self.noise_levels = tuple(check_level(v) for v in self.noise_levels)
        self.prompts = tuple(self.prompts)
        bad = [p for p in self.prompts if p not in PROMPT_MODES]
        if bad or not self.prompts or not self.noise_levels:
            raise ValueError(
                f"prompts must be some of {PROMPT_MODES} and noise_levels not empty, got {self.prompts!r}, {self.noise_levels!r}"
            )

    def planned_unet_evals(self, pipe=None) -> int:
        """Exact with `pipe` (its schedule decides the starting steps); SD's schedule otherwise."""
        from diffusers import DDIMScheduler

        scheduler = ddim_scheduler(pipe) if pipe is not None else DDIMScheduler(steps_offset=1)
        scheduler.set_timesteps(self.num_inference_steps)
        timesteps, n_train = list(scheduler.timesteps), scheduler.config.num_train_timesteps
        per_mode = {"concept": 2 if self.guidance_scale > 1.0 else 1, "empty": 1}
        return sum(
            self.images * (len(timesteps) - timestep_index(timesteps, level, n_train)) * per_mode[p]
            for level in self.noise_levels
            for p in self.prompts
        )


def run(
    pipe, concept: str, config: CompletionConfig | None = None, *, judge=None, callback=None, cancel=None, progress=False, **_
) -> ProbeResult:
    """Diffusion completion of k renders of `concept` by `pipe`; see the module docstring."""
    cfg = config or CompletionConfig()
    renders = concept_renders(concept, cfg.images, cfg.seed)
    if judge is None:
        from . import default_judge

        judge = default_judge()
    counter = Counter(cfg.max_unet_evals)
    counter.check_plan(cfg.planned_unet_evals(pipe), "the completion probe")
    scheduler = ddim_scheduler(pipe)
    scheduler.set_timesteps(cfg.num_inference_steps)
    timesteps = list(scheduler.timesteps)
    n_train = scheduler.config.num_train_timesteps
    device, dtype = pipe.unet.device, pipe.unet.dtype
    z0 = encode(pipe, [r.image for r in renders]).to(device, dtype)  # (k, 4, h, w)
    gen = torch.Generator("cpu").manual_seed(cfg.seed + 7)
    noise = torch.randn(z0.shape, generator=gen).to(device, dtype)
    cond = {"concept": embed(pipe, [r.prompt for r in renders]), "empty": embed(pipe, [""] * len(renders))}
    uncond = embed(pipe, [""] * len(renders))

    cells, outputs = {}, {}
    total = len(cfg.noise_levels) * len(cfg.prompts)
    for level in cfg.noise_levels:
        start = timestep_index(timesteps, level, n_train)
        t = timesteps[start]
        x_t = scheduler.add_noise(z0, noise, torch.full((len(renders),), int(t), dtype=torch.long))
        for mode in cfg.prompts:
            images = finish(pipe, x_t, mode, cond, uncond, cfg, start=start, counter=counter, cancel=cancel)
            key = f"{level:g}/{mode}"
            cells[key] = {
                "level": level,
                "timestep": int(t),
                "steps_run": len(timesteps) - start,
                "prompt": mode,
                "rate": judged(judge, images, concept).as_dict(),
                "psnr": float(np.mean([psnr(a, r.image) for a, r in zip(images, renders)])),
            }
            outputs[key] = images
            emit(callback, "completion-probe", len(cells), total, level=level, prompt=mode)
    measurements = {"cells": cells, "renders": judged(judge, [r.image for r in renders], concept).as_dict()}
    summary = {key: c["rate"]["rate"] for key, c in cells.items()}
    result = ProbeResult("completion", concept, asdict(cfg), measurements, summary, counter.stats())
    result.grid_cols = ["render", *[f"t={c['level']:g}, {c['prompt']}" for c in cells.values()]]
    shows = {key: judge.shows(outputs[key], concept) for key in outputs}
    for i, r in enumerate(renders[:6]):
        row = [(r.image, "input")] + [(outputs[key][i], "yes" if shows[key][i] else "no") for key in cells]
        result.grid_rows.append((r.prompt, row))
    return result


def format_result(result: ProbeResult) -> str:
    parts = [f"t={c['level']:g} {c['prompt']}: {rate_text(c['rate'])}" for c in result.measurements["cells"].values()]
    return "completion: " + "; ".join(parts) + "."


__all__ = ["CompletionConfig", "PROMPT_MODES", "format_result", "run"]
