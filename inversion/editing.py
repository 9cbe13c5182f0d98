"""Edit a real image with one call: invert it, then run prompt-to-prompt from the inversion.

    from inversion import edit
    out = edit(pipe, "photo.png", "a cat sitting on a sofa", "a tiger sitting on a sofa", method="null-text")
    out.reconstruction, out.edit        # PIL images at the model's resolution
    out.inversion.save("photo.inv.safetensors")   # later: edit(..., inversion=InversionResult.load(...))

Methods (one file each): "null-text" (Mokady et al. 2023, the default), "negative-prompt" (Miyake
et al. 2023), "direct" (Ju et al. 2024), "ddim" (plain DDIM inversion, the baseline). They differ
in the unconditional branch of the edit: null-text uses its optimised embedding of the step for
every row, negative-prompt the source prompt's embedding, ddim and direct the empty prompt's;
direct also sets the source row back onto the pivot after every step.

The source and the targets are sampled as one batch [source, target 1, ...]; the source row *is*
the reconstruction, so an edit costs one batched sampling pass after the inversion.

`EditConfig.target_null` (null-text and negative-prompt): "shared", the paper's and the official
notebook's, gives every row the source's fitted embedding; "empty" keeps it for the source row only
and gives the targets the empty prompt's embedding (plain CFG, as DDIM and Direct Inversion's
target branch; PnP Inversion's criticism of the shared null). Why it exists: an embedding that makes
the guided step land on the w = 1 pivot must make the UNet predict, at the source latent, what the
source prompt makes it predict (w eps_c + (1 - w) eps_u = eps_c requires eps_u = eps_c), so the
targets' guidance with it is w (eps(c_tgt) - eps(c_src)): negative-prompting the source at w = 7.5.
benchmarks/editing_study.md measures this on the toy world (the source-initialised nulls are the
source prompt's embedding on most steps, so null-text edits there are negative-prompt edits).
"""

import dataclasses
import importlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from studio.latents import decode, resolution, to_pil
from studio.progress import event
from studio.sampling import Cancelled, encode_prompts, is_cancelled

from . import REGISTRY
from .attention import install
from .common import embed, fingerprint, fp32_unet, prepare_image, progress_bar, same_model, scheduler_pair, unet_eps
from .control import Controller, make_controller
from .result import InversionResult


def _resolve(module: str, config: str) -> tuple:
    mod = importlib.import_module(f"{__package__}.{module}")
    return mod.invert, getattr(mod, config)


TARGET_NULLS = ("shared", "empty")
INVERTERS = {name: _resolve(*entry) for name, entry in REGISTRY.items()}  # name -> (invert, config class)


@dataclass
class EditConfig:
    """Prompt-to-prompt settings of an edit (defaults: the NTI notebook's cat -> tiger demo, threshold and start of its LocalBlend)."""

    mode: str = "auto"  # "replace" (same word count), "refine" (token alignment), "auto": replace when the word counts match
    cross_replace_steps: float | tuple | dict = (
        0.8  # fraction of steps (or (start, end), or {"default": .8, "word": .4}) with source cross maps
    )
    self_replace_steps: float | tuple = 0.5  # fraction of steps with source self-attention maps (the notebook suggests 0.3-0.7)
    reweight: dict | tuple | None = None  # {"word": scale} on the target prompt's tokens (equalizer), or (words, values)
    blend_words: str | tuple | None = None  # local blend: a word of both prompts, or (source words, target words)
    blend_threshold: float = 0.3  # LocalBlend threshold on the max-normalised map
    blend_start: float = 0.2  # blend from this fraction of the steps on
    blend_side: int | None = None  # side of the maps LocalBlend reads; None: latent/4, at least 8 (SD v1: 16, toy: 8)
    self_max_side: int | None = None  # self-attention replaced on layers at most this high; None: latent/2, at least 8 (SD v1: 32)
    target_null: str = "shared"  # null-text / negative-prompt: "shared" (paper) or "empty" (targets take the "" embedding)


@dataclass
class EditResult:
    reconstruction: object  # PIL image: the source row, what the inversion reproduces
    edits: list  # PIL images, one per target prompt
    inversion: InversionResult
    image: object  # PIL image: the input as the model saw it (cropped or padded, resized); the VAE decoding of the inversion when no image was given
    latents: torch.Tensor  # (1 + T, 4, h, w) final latents, source first
    blend_mask: np.ndarray | None = None  # (T, H, W) bool at image resolution: where the targets were allowed to change
    stats: dict = field(default_factory=dict)

    @property
    def edit(self):
        return self.edits[0]


def invert(
    pipe, image, prompt: str, method: str = "null-text", config=None, *, fit="crop", callback=None, cancel=None, progress=False
) -> InversionResult:
    """Invert `image` under `prompt` with `method` (its config class's defaults unless `config` is given)."""
    if method not in INVERTERS:
        raise ValueError(f"unknown inversion method {method!r}; use one of {', '.join(INVERTERS)}")
    fn, config_class = INVERTERS[method]
    if config is not None and not isinstance(config, config_class):
        raise ValueError(f"method {method!r} takes a {config_class.__name__}, got a {type(config).__name__}")
    return fn(pipe, image, prompt, config, fit=fit, callback=callback, cancel=cancel, progress=progress)


def edit(
    pipe,
    image,
    source_prompt: str,
    target_prompt: str | list[str],
    method: str | None = None,
    *,
    config: EditConfig | None = None,
    inversion_config=None,
    inversion: InversionResult | None = None,
    fit: str = "crop",
    callback=None,
    cancel=None,
    progress: bool = False,
    **overrides,
) -> EditResult:
    """Invert `image` under `source_prompt` (or reuse `inversion`) and edit it toward `target_prompt`.

    `method`: "null-text" (default), "negative-prompt", "direct" or "ddim". Keyword `overrides` set
    fields of `EditConfig` (e.g. `blend_words=("red", "blue")`, `cross_replace_steps=0.4`).
    `callback(info)` gets `studio.progress` events: the inverter's (stage = its name), then stage
    "edit" once per sampling step (with "i", "t", "x", "denoised"); `cancel` (threading.Event)
    raises `studio.sampling.Cancelled`.
    """
    cfg = config or EditConfig()
    if overrides:
        known = {f.name for f in dataclasses.fields(EditConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown edit option(s) {unknown}; EditConfig has {sorted(known)}")
        cfg = dataclasses.replace(cfg, **overrides)
    if method is not None and method not in INVERTERS:
        raise ValueError(f"unknown inversion method {method!r}; use one of {', '.join(INVERTERS)}")
    if cfg.target_null not in TARGET_NULLS:
        raise ValueError(f"unknown target_null {cfg.target_null!r}; use one of {', '.join(TARGET_NULLS)}")
    if not isinstance(source_prompt, str) or not source_prompt.strip():
        raise ValueError(f"the source prompt is empty ({source_prompt!r}); describe the image as it is, e.g. 'a red circle'")
    targets = [target_prompt] if isinstance(target_prompt, str) else list(target_prompt)
    if not targets:
        raise ValueError("give at least one target prompt")
    start = time.perf_counter()
    if inversion is not None:
        check_inversion(pipe, inversion, source_prompt, method)
        latent_hw, steps, guidance = tuple(inversion.latent_T.shape[-2:]), inversion.num_inference_steps, inversion.guidance_scale
    else:
        if image is None:
            raise ValueError("give an image to edit (or an inversion=... loaded with InversionResult.load)")
        inv_cfg = inversion_config or INVERTERS[method or "null-text"][1]()
        side = int(pipe.unet.config.sample_size)
        latent_hw, steps, guidance = (side, side), inv_cfg.num_inference_steps, inv_cfg.guidance_scale
    # every prompt-dependent check (word counts, blend and reweight words) fails here, before the inversion runs
    controller = make_controller(
        pipe.tokenizer,
        source_prompt,
        targets,
        steps,
        cfg=guidance > 1.0,
        latent_hw=latent_hw,
        mode=cfg.mode,
        cross_replace_steps=cfg.cross_replace_steps,
        self_replace_steps=cfg.self_replace_steps,
        reweight=cfg.reweight,
        blend_words=cfg.blend_words,
        blend_threshold=cfg.blend_threshold,
        blend_start=cfg.blend_start,
        blend_side=cfg.blend_side,
        self_max_side=cfg.self_max_side,
    )
    if inversion is None:
        prepared, note = prepare_image(pipe, image, fit)
        inversion = invert(
            pipe, prepared, source_prompt, method or "null-text", inv_cfg, fit=fit, callback=callback, cancel=cancel, progress=progress
        )
        inversion.stats["image"] = note
    else:
        prepared = to_pil(decode(pipe.vae, inversion.image_latent))[0] if image is None else prepare_image(pipe, image, inversion.fit)[0]
    inverted = time.perf_counter()
    latents, evals = sample_from_inversion(
        pipe,
        inversion,
        [source_prompt, *targets],
        controller,
        target_null=cfg.target_null,
        callback=callback,
        cancel=cancel,
        progress=progress,
    )
    images = to_pil(decode(pipe.vae, latents))
    mask = None
    if controller.blend is not None and controller.blend.last_mask is not None:
        size = resolution(pipe)
        m = torch.nn.functional.interpolate(controller.blend.last_mask[1:].float(), size=(size, size), mode="nearest")
        mask = m[:, 0].bool().cpu().numpy()
    stats = {
        "inversion_seconds": inverted - start,
        "edit_seconds": time.perf_counter() - inverted,
        "edit_unet_forward": evals,
        "mode": controller.plan.mode,
    }
    return EditResult(images[0], images[1:], inversion, prepared, latents, mask, stats)


def reconstruct(pipe, inversion: InversionResult, *, callback=None, cancel=None, progress=False):
    """The inversion's reconstruction alone: (PIL image, latents (1, 4, h, w))."""
    latents, _ = sample_from_inversion(pipe, inversion, [inversion.prompt], None, callback=callback, cancel=cancel, progress=progress)
    return to_pil(decode(pipe.vae, latents))[0], latents


def check_inversion(pipe, inversion: InversionResult, source_prompt: str, method: str | None) -> None:
    if method is not None and method != inversion.method:
        raise ValueError(
            f"the inversion was made with method {inversion.method!r}, not {method!r}; pass method={inversion.method!r} or invert again"
        )
    if source_prompt != inversion.prompt:
        raise ValueError(
            f"the inversion was made with the source prompt {inversion.prompt!r}, not {source_prompt!r}; use that prompt or invert again"
        )
    if inversion.fingerprint and not same_model(inversion.fingerprint, fingerprint(pipe)):
        raise ValueError("the inversion was made with a different model; invert the image again with this one")
    if inversion.resolution and inversion.resolution != resolution(pipe):
        raise ValueError(f"the inversion is for {inversion.resolution}px images but this model works at {resolution(pipe)}px; invert again")


@torch.no_grad()
def sample_from_inversion(
    pipe,
    inversion: InversionResult,
    prompts: list[str],
    controller: Controller | None,
    *,
    target_null: str = "shared",
    callback=None,
    cancel=None,
    progress=False,
):
    """DDIM + CFG from z*_T for the prompts [source, targets...] with the method's unconditional branch.

    Returns (latents (B, 4, h, w), UNet evaluations).
    """
    method = inversion.method
    unet = fp32_unet(pipe) if method == "null-text" else pipe.unet  # null-text embeddings were optimised in fp32
    dtype, device = unet.dtype, unet.device
    if controller is not None:
        install(unet)
    n = inversion.num_inference_steps
    forward, _ = scheduler_pair(inversion.scheduler_config, n, device=device)
    w = inversion.guidance_scale
    b = len(prompts)
    if target_null not in TARGET_NULLS:
        raise ValueError(f"unknown target_null {target_null!r}; use one of {', '.join(TARGET_NULLS)}")
    cond = encode_prompts(pipe, prompts).to(dtype)  # (B, 77, D)
    empty = embed(pipe, "").to(dtype)  # (1, 77, D)
    own = target_null == "empty" and method in ("null-text", "negative-prompt")  # only the source row keeps the fitted embedding
    if method == "negative-prompt":
        uncond = torch.cat([cond[:1], empty.expand(b - 1, -1, -1)]) if own else cond[:1].expand(b, -1, -1)
    elif method in ("ddim", "direct"):
        uncond = empty.expand(b, -1, -1)
    else:
        nulls = inversion.null_embeddings.to(device, dtype)  # (N, 77, D)
        if len(nulls) != n:
            raise ValueError(f"the inversion holds {len(nulls)} null embeddings for {n} steps; the file is damaged, invert again")
    offset_target = bool(inversion.config.get("offset_target", False))
    pivot = inversion.pivot.to(device, dtype) if method == "direct" else None
    latents = inversion.latent_T.to(device, dtype).expand(b, -1, -1, -1).clone()
    kwargs = {"cross_attention_kwargs": {"controller": controller}} if controller is not None else {}
    evals = 0
    steps = list(forward.timesteps)
    for i, t in enumerate(progress_bar(steps, progress, "editing" if b > 1 else "reconstructing")):
        if is_cancelled(cancel):
            raise Cancelled(f"edit cancelled at step {i} of {n}")
        if controller is not None:
            controller.begin_step(i)
        if method == "null-text":
            uncond = torch.cat([nulls[i][None], empty.expand(b - 1, -1, -1)]) if own else nulls[i][None].expand(b, -1, -1)
        if w > 1.0:
            eps_u, eps_c = unet_eps(unet, torch.cat([latents, latents]), t, torch.cat([uncond, cond]), **kwargs).chunk(2)
            eps = eps_u + w * (eps_c - eps_u)
            evals += 2 * b
        else:
            eps = unet_eps(unet, latents, t, cond, **kwargs)
            evals += b
        if controller is not None and controller.calls["cross"] == 0:
            raise RuntimeError(
                "prompt-to-prompt hooked no attention layer: the UNet's attention processors were replaced after ours "
                "(e.g. by enable_xformers_memory_efficient_attention) or do not pass cross_attention_kwargs on"
            )
        out = forward.step(eps, t, latents)
        latents = out.prev_sample
        if pivot is not None:  # Direct Inversion: the source row goes back onto the pivot (= adding PnP's offset)
            on_pivot = pivot[n - 1 - i]
            rest = on_pivot + (latents[1:] - latents[:1]) if offset_target else latents[1:]  # = target + offset
            latents = torch.cat([on_pivot, rest])
        if controller is not None:
            latents = controller.end_step(latents, i)
        if callback is not None:
            callback(event("edit" if b > 1 else "reconstruction", i + 1, n, i=i, t=int(t), x=latents, denoised=out.pred_original_sample))
    return latents.float(), evals
