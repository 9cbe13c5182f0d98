"""What every revival probe shares: the concept's renders and prompts, judged rates, the UNet
evaluation budget, DDIM denoising from a given latent and timestep, and the result of a probe.

    renders = concept_renders("triangle", 4, seed=0)     # toy renders that show the concept, with captions naming it
    counter = Counter(max_unet_evals=None)               # counts UNet evaluations and seconds
    images = generate(pipe, prompts, seeds, steps=50, guidance=7.5, counter=counter)
    rate = judged(judge, images, "triangle")             # studio.stats.Rate

A probe returns a `ProbeResult`: its measurements (every rate as `Rate.as_dict()`), a summary, the
costs (`stats`: unet_evals, seconds) and the images it drew (`grid()` lays them out with labels).
"""

import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from studio.progress import event
from studio.latents import decode as decode_latents
from studio.latents import encode as encode_latents
from studio.latents import to_pil
from studio.sampling import Cancelled, ddim_scheduler, encode_prompts, guided_noise, is_cancelled
from studio.stats import Rate, format_rate


# ---------------------------------------------------------------- the concept


def erasable_concept(name: str):
    """The toy concept called `name` (a `ToyConcept`); a clear ValueError for anything else, and for backgrounds."""
    from studio.toyworld.grammar import concept

    c = concept(name)  # raises ValueError naming the known concepts
    if c.attribute == "background":
        raise ValueError(f"{name!r} is a background; the revival probes take a shape, colour or style (e.g. triangle, striped)")
    return c


def names_concept(text: str, name: str) -> bool:
    """Whether `text` names concept `name` by its base word or a synonym (whole words)."""
    c = erasable_concept(name)
    return any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text.lower()) for w in c.words)


@dataclass
class ConceptRender:
    image: Image.Image  # 32x32 RGB
    labels: dict  # shape, colour, style, background
    mask: np.ndarray  # (32, 32) bool: the object
    caption: str  # a training caption that names the concept
    prompt: str  # the full description "a striped red triangle on a dark background"


def describe_labels(labels: dict) -> str:
    from studio.toyworld.captions import article

    return article(f"a {labels['style']} {labels['colour']} {labels['shape']} on a {labels['background']} background")


def concept_renders(name: str, k: int, seed: int = 0) -> list:
    """`k` renders that show concept `name` (its attribute fixed, the rest random; never an empty image),
    each with a training caption drawn from the toy world's templates that names the concept."""
    from studio.toyworld.captions import caption
    from studio.toyworld.render import render

    c = erasable_concept(name)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the probe needs at least one image of the concept, got k={k!r}; use e.g. k=4")
    rng = np.random.default_rng([seed, 31337])
    out = []
    while len(out) < k:
        r = render({c.attribute: c.name}, rng=rng)
        if r.labels["shape"] == "none":
            continue
        for _ in range(100):  # a caption that names the concept (some templates leave an attribute unsaid)
            text = caption(r.labels, rng)
            if names_concept(text, c.name):
                break
        else:
            text = describe_labels(r.labels)
        out.append(ConceptRender(Image.fromarray(r.image), r.labels, r.mask, text, describe_labels(r.labels)))
    return out


def eval_prompts(name: str, n: int) -> list:
    """The first `n` of the concept's direct evaluation prompts (the robustness report's own set)."""
    from studio.toyworld.captions import prompts_for

    return [p for p, _ in prompts_for(erasable_concept(name).name, "direct", n)]


# ---------------------------------------------------------------- the budget


class BudgetExceeded(ValueError):
    """A probe's planned UNet evaluations exceed its `max_unet_evals`."""


class Counter:
    """UNet evaluations and wall time of one probe run (resumed runs add their earlier counts)."""

    def __init__(self, max_unet_evals: int | None = None, unet_evals: int = 0, seconds: float = 0.0):
        self.max_unet_evals = max_unet_evals
        self.unet_evals = int(unet_evals)
        self.before = float(seconds)
        self.started = time.perf_counter()

    def check_plan(self, planned: int, probe: str) -> None:
        if self.max_unet_evals is not None and planned > self.max_unet_evals:
            raise BudgetExceeded(
                f"{probe} would take {planned} UNet evaluations, over its budget max_unet_evals={self.max_unet_evals}; "
                "raise the budget or lower the images, steps or seeds"
            )

    def add(self, n: int) -> None:
        self.unet_evals += int(n)

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def stats(self, **extra) -> dict:
        return {"unet_evals": self.unet_evals, "seconds": round(self.seconds(), 2), **extra}


# ---------------------------------------------------------------- latents, sampling, judging


@torch.no_grad()
def encode(pipe, images) -> torch.Tensor:
    """Clean latents `(B, 4, h, w)` fp32 of PIL images (the VAE posterior mean, shifted and scaled: `studio.latents`)."""
    return encode_latents(pipe.vae, images)


def decode(pipe, latents: torch.Tensor) -> list:
    return to_pil(decode_latents(pipe.vae, latents))


def timestep_index(timesteps, level: float, num_train_timesteps: int) -> int:
    """Index of the DDIM timestep nearest to `level * num_train_timesteps` (0 < level < 1)."""
    target = level * num_train_timesteps
    return int(np.argmin([abs(int(t) - target) for t in timesteps]))


@torch.no_grad()
def finish(pipe, latents, mode: str, cond: dict, uncond, cfg, **kw) -> list:
    """Denoise `latents` under prompt `mode` ("concept": guided at `cfg.guidance_scale`; "empty": unguided,
    as an empty prompt has nothing to guide toward) and decode them: the completion and inpainting step."""
    w = cfg.guidance_scale if mode == "concept" else 1.0
    z = denoise(pipe, latents, cond[mode], uncond if w > 1.0 else None, num_inference_steps=cfg.num_inference_steps, guidance_scale=w, **kw)
    return decode(pipe, z)


def denoise(
    pipe,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    start: int = 0,
    blend=None,
    counter: Counter | None = None,
    cancel=None,
) -> torch.Tensor:
    """DDIM + CFG from `latents` at step index `start` of an `num_inference_steps` schedule to the end.

    `studio.sampling.sample` always starts at T (it has `stop_at`, not a start), so diffusion
    completion runs this loop: the same scheduler calls and the same guidance (`guided_noise`).
    `blend(latents, i, t_prev)` is called after every step and may replace the latents (inpainting).
    """
    scheduler = ddim_scheduler(pipe)
    scheduler.set_timesteps(num_inference_steps, device=pipe.unet.device)
    timesteps = list(scheduler.timesteps)
    x = latents.to(pipe.unet.device, pipe.unet.dtype)
    n = x.shape[0]
    per = 2 if guidance_scale > 1.0 else 1
    for i in range(start, len(timesteps)):
        if is_cancelled(cancel):
            raise Cancelled(f"denoising cancelled at step {i} of {len(timesteps)}")
        t = timesteps[i]
        eps = guided_noise(pipe.unet, x, t, cond, uncond, guidance_scale, scheduler)
        x = scheduler.step(eps, t, x).prev_sample
        if counter is not None:
            counter.add(per * n)
        if blend is not None:
            t_prev = int(timesteps[i + 1]) if i + 1 < len(timesteps) else None
            x = blend(x, i, t_prev)
    return x


def generate(pipe, prompts: list, seeds: list, *, steps: int, guidance: float, batch_size: int = 64, counter=None, cancel=None) -> list:
    """Images for every (prompt, seed) pair, prompt-major, drawn by `studio.sampling.sample` in batches."""
    from studio.sampling import sample_many

    images = sample_many(pipe, prompts, seeds, batch_size=batch_size, num_inference_steps=steps, guidance_scale=guidance, cancel=cancel)
    if counter is not None:
        counter.add(len(images) * steps * (2 if guidance > 1.0 else 1))
    return images


def judged(judge, images, name: str) -> Rate:
    """How many of `images` the judge says show concept `name`."""
    shown = np.asarray(judge.shows(images, erasable_concept(name).name), dtype=bool)
    return Rate(int(shown.sum()), int(len(shown)))


def embed(pipe, prompts) -> torch.Tensor:
    with torch.no_grad():
        return encode_prompts(pipe, prompts)


def emit(callback, stage: str, step: int, total: int | None, **extras) -> None:
    if callback is not None:
        callback(event(stage, step, total, **extras))


def check_level(level, what: str = "noise level") -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not (0.0 < float(level) < 1.0):
        raise ValueError(f"{what} {level!r} is outside (0, 1); give a fraction of the noise schedule, e.g. 0.5")
    return float(level)


def check_positive(value, name: str, example) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}; e.g. {name}={example}")
    return value


# ---------------------------------------------------------------- results


@dataclass
class ProbeResult:
    """One probe on one model and concept. `measurements` are JSON-able (rates as `Rate.as_dict()`)."""

    probe: str
    concept: str
    config: dict
    measurements: dict
    summary: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # unet_evals, seconds (and what the probe adds)
    grid_rows: list = field(default_factory=list)  # [(row label, [(PIL image or None, caption)])]
    grid_cols: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("grid_rows")
        d.pop("grid_cols")
        return d

    def grid(self, title: str | None = None):
        from studio.images import make_grid

        if not self.grid_rows:
            return None
        cols = max(len(cells) for _, cells in self.grid_rows)
        images, captions = [], []
        for _, cells in self.grid_rows:
            cells = list(cells) + [(None, "")] * (cols - len(cells))
            images += [im for im, _ in cells]
            captions += [cap for _, cap in cells]
        labels = self.grid_cols + [""] * (cols - len(self.grid_cols))
        return make_grid(
            images,
            len(self.grid_rows),
            cols,
            row_labels=[r for r, _ in self.grid_rows],
            col_labels=labels,
            captions=captions,
            title=title or f"{self.probe} / {self.concept}",
        )


def rate_text(d: dict) -> str:
    """`Rate.as_dict()` -> '23% (7/30) [12, 41]'."""
    return format_rate(d["k"], d["n"])
