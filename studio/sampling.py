"""Our own DDIM sampling loop with classifier-free guidance, shared by the erasers, the attacks,
inversion and the app.

It computes exactly what `StableDiffusionPipeline.__call__` computes with a DDIM scheduler (same
noise for the same seeds, same batching of the unconditional and conditional halves, same
scheduler calls), and adds what a studio needs:

* a k-diffusion-style `callback(info)` after every step, `info = {"i", "t", "x", "denoised"}`
  (step index, timestep, latents after the step, predicted clean latents);
* cancellation: `cancel` is a `threading.Event` (or any object with `is_set()`, or a callable);
  when it is set the loop stops and raises `Cancelled`;
* per-image seeds (`seed=[0, 1, 2]`), so an image does not change with the batch it is drawn in;
* `stop_at` to halt after a number of steps and return the partial latents (ESD's `till_T`).

    out = sample(pipe, ["a red triangle", "a blue star"], seed=[0, 1], num_inference_steps=25)
    out.images  # list of PIL images
"""

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image


MAX_TOKENS = 77


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
        raise ValueError(f"prompt has {n} tokens; CLIP takes at most {limit} (start and end tokens included). Shorten it: {prompt[:60]!r}...")
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


def initial_latents(pipe, n: int, generator, height=None, width=None, dtype=None) -> torch.Tensor:
    """The starting noise, drawn exactly as `StableDiffusionPipeline.prepare_latents` draws it."""
    from diffusers.utils.torch_utils import randn_tensor

    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
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


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images `(B, 3, H, W)` in [0, 1]."""
    x = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return (x / 2 + 0.5).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list:
    arr = (images.float().permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


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
) -> SampleOutput:
    """DDIM + classifier-free guidance; see the module docstring. `output_type` is "pil", "pt" or "latent"."""
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
    uncond = None
    if guidance_scale > 1.0:
        if negative_prompt_embeds is not None:
            uncond = negative_prompt_embeds
        else:
            negs = [negative_prompt] * n if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negs) != n:
                raise ValueError(f"{len(negs)} negative prompts for {n} prompts")
            uncond = encode_prompts(pipe, negs)
        uncond = uncond.expand(n, -1, -1) if uncond.shape[0] == 1 and n > 1 else uncond

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
            callback({"i": i, "t": int(t), "x": latents, "denoised": out.pred_original_sample})

    images = None
    if output_type != "latent":
        decoded = decode_latents(pipe, latents)
        images = to_pil(decoded) if output_type == "pil" else decoded
    return SampleOutput(latents=latents, images=images, timesteps=[int(t) for t in timesteps])
