"""Our own DDIM sampling loop with classifier-free guidance, shared by the erasers, the attacks,
inversion and the app.

It computes exactly what `StableDiffusionPipeline.__call__` computes with a DDIM scheduler (same
noise for the same seeds, same batching of the unconditional and conditional halves, same
scheduler calls), and adds what a studio needs:

* a k-diffusion-style `callback(info)` after every step, in the studio's one progress shape
  (`studio.progress`): `{"stage": "sampling", "step", "total", "i", "t", "x", "denoised"}` (steps
  done, steps in all, step index, timestep, latents after the step, predicted clean latents);
* cancellation: `cancel` is a `threading.Event` (or any object with `is_set()`, or a callable);
  when it is set the loop stops and raises `Cancelled`;
* per-image seeds (`seed=[0, 1, 2]`), so an image does not change with the batch it is drawn in;
* `stop_at` to halt after a number of steps and return the partial latents (ESD's `till_T`).

    out = sample(pipe, ["a red triangle", "a blue star"], seed=[0, 1], num_inference_steps=25)
    out.images  # list of PIL images
    images = sample_many(pipe, prompts, seeds=[0, 1, 2, 3], batch_size=32)   # prompts x seeds, in batches

Bad settings (0 or negative steps, NaN guidance, a size that is not a multiple of 8 or over
`MAX_SIZE_FACTOR` times the model's resolution) raise ValueError before any work: `check_settings`.
Latents go in and out of the VAE through `studio.latents` (the one implementation).
"""

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from diffusers import DDIMScheduler

from .latents import decode, resolution, to_pil, vae_scale_factor
from .progress import event

MAX_TOKENS = 77
MAX_SIZE_FACTOR = 4  # images larger than this many times the model's resolution need force=True

__all__ = [
    "MAX_SIZE_FACTOR",
    "MAX_TOKENS",
    "Cancelled",
    "SampleOutput",
    "check_prompt",
    "check_settings",
    "ddim_scheduler",
    "encode_prompts",
    "generators",
    "guided_noise",
    "initial_latents",
    "is_cancelled",
    "sample",
    "sample_many",
    "sample_pairs",
    "tokenize",
]


class Cancelled(RuntimeError):
    """A long job was cancelled by its caller."""


def is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return cancel.is_set()
    return bool(cancel())


def check_prompt(tokenizer, prompt: str) -> int:
    """Number of CLIP tokens in `prompt` (with start and end); raises if it exceeds 77."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    n = len(tokenizer(prompt, truncation=False).input_ids)
    limit = getattr(tokenizer, "model_max_length", MAX_TOKENS)
    limit = MAX_TOKENS if limit > 10_000 else limit
    if n > limit:
        raise ValueError(
            f"prompt has {n} tokens; CLIP takes at most {limit} (start and end tokens included). Shorten it: {prompt[:60]!r}..."
        )
    return n


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    for p in prompts:
        check_prompt(tokenizer, p)
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


def encode_prompts(pipe, prompts: str | list[str]) -> torch.Tensor:
    """CLIP text embeddings `(B, 77, D)` of the prompts, as `StableDiffusionPipeline.encode_prompt` makes them."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = tokenize(pipe.tokenizer, prompts).to(pipe.text_encoder.device)
    mask = None
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):
        mask = (ids != pipe.tokenizer.pad_token_id).long()
    return pipe.text_encoder(ids, attention_mask=mask)[0].to(pipe.unet.dtype)


def ddim_scheduler(pipe) -> DDIMScheduler:
    """A DDIM scheduler with the pipeline's noise schedule (whatever scheduler it was saved with)."""
    if isinstance(pipe.scheduler, DDIMScheduler):
        return DDIMScheduler.from_config(pipe.scheduler.config)
    return DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)


def generators(seed, n: int, device="cpu"):
    """One `torch.Generator` per image: `seed` is an int (seed, seed+1, ...), a list, or None (random)."""
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(n)]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images")
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def check_settings(pipe, num_inference_steps=50, guidance_scale=7.5, height=None, width=None, *, force: bool = False) -> None:
    """Raise a ValueError naming the bad value and the fix, before any work is done.

    Steps must be a whole number >= 1, guidance a finite number, height and width positive multiples
    of 8 (and of the VAE's scale) and at most `MAX_SIZE_FACTOR` times the model's resolution unless
    `force=True` (4096 px on the 32 px toy model runs for minutes and takes gigabytes).
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, Integral) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a whole number of steps >= 1, got {num_inference_steps!r}; use e.g. 50")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real) or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}; use e.g. 7.5 (1 for no guidance)")
    multiple = max(8, vae_scale_factor(pipe))
    limit = MAX_SIZE_FACTOR * resolution(pipe)
    for name, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1 or value % multiple:
            raise ValueError(
                f"{name} must be a positive multiple of {multiple} pixels, got {value!r}; e.g. {resolution(pipe)} (the model's resolution)"
            )
        if value > limit and not force:
            raise ValueError(
                f"{name} {value} is over {MAX_SIZE_FACTOR}x the model's resolution ({resolution(pipe)} px); "
                f"use at most {limit}, or pass force=True (--force) to sample it anyway"
            )


def initial_latents(pipe, n: int, generator, height=None, width=None, dtype=None) -> torch.Tensor:
    """The starting noise, drawn exactly as `StableDiffusionPipeline.prepare_latents` draws it."""
    from diffusers.utils.torch_utils import randn_tensor

    scale = vae_scale_factor(pipe)
    height = height or pipe.unet.config.sample_size * scale
    width = width or pipe.unet.config.sample_size * scale
    if height % scale or width % scale:
        raise ValueError(f"height and width must be multiples of {scale} for this model, got {height}x{width}")
    shape = (n, pipe.unet.config.in_channels, height // scale, width // scale)
    return randn_tensor(shape, generator=generator, device=pipe.unet.device, dtype=dtype or pipe.unet.dtype)


@dataclass
class SampleOutput:
    latents: torch.Tensor  # (B, 4, h, w), final (or partial, with stop_at) latents
    images: list | None  # PIL images, or None when output_type="latent"
    timesteps: list  # the timesteps that were run


def guided_noise(unet, latents, t, cond, uncond, guidance_scale, scheduler=None):
    """One classifier-free-guided noise prediction, batched as the diffusers pipeline batches it."""
    if guidance_scale > 1.0:
        x = torch.cat([latents] * 2)
        x = scheduler.scale_model_input(x, t) if scheduler is not None else x
        eps = unet(x, t, encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    x = scheduler.scale_model_input(latents, t) if scheduler is not None else latents
    return unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]


def _embeddings(pipe, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance_scale):
    """(cond (B, 77, D), uncond (B, 77, D) or None when unguided)."""
    if prompt_embeds is None:
        if prompt is None:
            raise ValueError("give a prompt (or prompt_embeds)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("the list of prompts is empty")
        cond = encode_prompts(pipe, prompts)
    else:
        cond = prompt_embeds
    n = cond.shape[0]
    if guidance_scale <= 1.0:
        return cond, None
    if negative_prompt_embeds is not None:
        uncond = negative_prompt_embeds
    else:
        negs = [negative_prompt] * n if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negs) != n:
            raise ValueError(f"{len(negs)} negative prompts for {n} prompts")
        uncond = encode_prompts(pipe, negs)
    return cond, uncond.expand(n, -1, -1) if uncond.shape[0] == 1 and n > 1 else uncond


@torch.no_grad()
def sample(
    pipe,
    prompt: str | list[str] | None = None,
    *,
    negative_prompt: str | list[str] = "",
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int | list | None = None,
    generator=None,
    latents: torch.Tensor | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    height: int | None = None,
    width: int | None = None,
    eta: float = 0.0,
    stop_at: int | None = None,
    callback=None,
    cancel=None,
    output_type: str = "pil",
    progress: bool = False,
    force: bool = False,
) -> SampleOutput:
    """DDIM + classifier-free guidance; see the module docstring. `output_type` is "pil", "pt" or "latent".

    `force=True` allows sizes over `MAX_SIZE_FACTOR` times the model's resolution.
    """
    check_settings(pipe, num_inference_steps, guidance_scale, height, width, force=force)
    cond, uncond = _embeddings(pipe, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance_scale)
    n = cond.shape[0]
    if generator is None:
        generator = generators(seed, n, device="cpu" if pipe.unet.device.type == "mps" else pipe.unet.device)
    if latents is None:
        latents = initial_latents(pipe, n, generator, height, width, dtype=cond.dtype)
    scheduler = ddim_scheduler(pipe)
    scheduler.set_timesteps(num_inference_steps, device=pipe.unet.device)
    latents = latents.to(pipe.unet.device) * scheduler.init_noise_sigma
    step_kwargs = {"eta": eta, "generator": generator}

    timesteps = list(scheduler.timesteps)
    if stop_at is not None:
        timesteps = timesteps[:stop_at]
    iterator = timesteps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(timesteps, desc="sampling", leave=False)
    for i, t in enumerate(iterator):
        if is_cancelled(cancel):
            raise Cancelled(f"sampling cancelled at step {i} of {len(timesteps)}")
        eps = guided_noise(pipe.unet, latents, t, cond, uncond, guidance_scale, scheduler)
        out = scheduler.step(eps, t, latents, **step_kwargs)
        latents = out.prev_sample
        if callback is not None:
            callback(event("sampling", i + 1, len(timesteps), i=i, t=int(t), x=latents, denoised=out.pred_original_sample))

    images = None
    if output_type != "latent":
        decoded = decode(pipe.vae, latents)
        images = to_pil(decoded) if output_type == "pil" else decoded
    return SampleOutput(latents=latents, images=images, timesteps=[int(t) for t in timesteps])


def sample_many(
    pipe,
    prompts: str | list[str],
    seeds: int | list = 1,
    *,
    batch_size: int = 32,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    callback=None,
    cancel=None,
    **kwargs,
) -> list:
    """Every prompt with every seed, sampled `batch_size` images at a time -> PIL images in the order
    `[(p0, s0), (p0, s1), ..., (p1, s0), ...]` (`sample_pairs` over the cross product).

    `seeds` is a list of seeds or a count n (seeds 0..n-1). An image does not depend on its batch, so
    the batch size changes only speed and memory. `callback` gets `{"stage": "sampling", "step",
    "total"}` counted over all batches (steps x batches), with "batch", "images" (images done before
    this batch), "i", "t", "x", "denoised"; other keyword arguments go to `sample`.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = list(range(seeds)) if isinstance(seeds, Integral) and not isinstance(seeds, bool) else list(seeds)
    if not prompts or not seeds:
        raise ValueError(f"nothing to sample: {len(prompts)} prompts x {len(seeds)} seeds; give at least one of each")
    jobs = [(p, s) for p in prompts for s in seeds]
    return sample_pairs(
        pipe,
        [p for p, _ in jobs],
        [s for _, s in jobs],
        batch_size=batch_size,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        callback=callback,
        cancel=cancel,
        **kwargs,
    )


def sample_pairs(
    pipe,
    prompts: list[str],
    seeds: list,
    *,
    batch_size: int = 32,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    callback=None,
    cancel=None,
    **kwargs,
):
    """One image per (prompt, seed) pair, `batch_size` at a time: PIL images in the pairs' order, or one
    `(N, 3, H, W)` tensor with `output_type="pt"`. Each image is the one `sample(pipe, prompt, seed=seed)`
    makes (its own generator; an image does not depend on its batch). `callback` as `sample_many`'s."""
    prompts, seeds = list(prompts), list(seeds)
    if len(prompts) != len(seeds):
        raise ValueError(f"one seed per prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}; lower it only when memory runs out")
    if not prompts:
        raise ValueError("nothing to sample: give at least one (prompt, seed) pair")
    check_settings(pipe, num_inference_steps, guidance_scale, kwargs.get("height"), kwargs.get("width"), force=kwargs.get("force", False))
    for p in dict.fromkeys(prompts):
        check_prompt(pipe.tokenizer, p)
    n_batches = -(-len(prompts) // batch_size)
    steps = kwargs.get("stop_at") or num_inference_steps
    images, done = [], 0
    for b in range(n_batches):
        chunk = slice(b * batch_size, (b + 1) * batch_size)
        relay = None
        if callback is not None:
            relay = lambda info, b=b, done=done: callback(
                {**info, "step": b * steps + info["step"], "total": n_batches * steps, "batch": b, "images": done}
            )
        out = sample(
            pipe,
            prompts[chunk],
            seed=seeds[chunk],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            callback=relay,
            cancel=cancel,
            **kwargs,
        )
        images.append(out.images)
        done += len(out.images)
    if kwargs.get("output_type") == "pt":
        return torch.cat([x.float().cpu() for x in images])
    return [image for batch in images for image in batch]
