"""Direct Inversion (Ju, Zeng, Bian, Liu, Xu: "PnP Inversion: Boosting Diffusion-based Editing with
3 Lines of Code", ICLR 2024; cure-lab/PnPInversion).

On the w = 1 DDIM pivot z*_0 .. z*_T, the source branch of the edit is corrected after every
guided DDIM step by the offset z*_{t-1} - step(z*_t), so it follows the pivot exactly and
reconstructs the image up to the VAE; the target branch runs plain CFG (with the empty prompt as
the unconditional embedding) and receives prompt-to-prompt's attention maps from that exactly
reconstructed source. No optimisation, no backpropagation.

Deliberate difference from the official code: PnPInversion precomputes the offsets with one batched
CFG pass per step (2N extra UNet evaluations) and adds them at edit time. Adding the offset to the
source branch's step sets it to z*_{t-1}, so we store the pivot itself and set the source branch to
it after each step (and compute the offset there, for free, when `offset_target=True` asks to add it
to the target branch too, PnPInversion's "add_target" variant). Same trajectory, exact at any
guidance scale, and the inversion costs only the pivot's N evaluations.
"""

from dataclasses import dataclass

from studio.latents import encode

from .common import embed, restage, make_result, new_counter, prepare_image, schedulers
from .ddim import ddim_pivot
from .result import InversionResult


@dataclass
class DirectInversionConfig:
    """Direct Inversion; defaults as PnPInversion's P2P runs."""

    num_inference_steps: int = 50  # DDIM steps
    guidance_scale: float = 7.5  # w of the edit
    offset_target: bool = False  # also add the source's offset to the target branch (PnPInversion's "add_target")


def invert(
    pipe, image, prompt: str, config: DirectInversionConfig | None = None, *, fit="crop", callback=None, cancel=None, progress=False
) -> InversionResult:
    """Direct inversion of `image` under `prompt`: the pivot trajectory, kept whole."""
    cfg = config or DirectInversionConfig()
    counter = new_counter()
    image, note = prepare_image(pipe, image, fit)
    _, inverse = schedulers(pipe, cfg.num_inference_steps)
    z0 = encode(pipe.vae, image)
    pivot = ddim_pivot(
        pipe.unet, inverse, z0, embed(pipe, prompt), callback=restage(callback, "direct"), cancel=cancel, progress=progress, counter=counter
    )
    return make_result(pipe, "direct", prompt, cfg, z0, pivot[-1], fit=fit, note=note, counter=counter, pivot=pivot)
