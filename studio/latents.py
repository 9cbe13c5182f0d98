"""Images in and out of the VAE's latent space, once for the whole studio (sampling, the attacks'
targets, DoCo's anchors, every inversion and the app).

    z = encode(pipe.vae, images)      # PIL image(s) or (B, 3, H, W) in [0, 1] -> (B, 4, h, w) fp32
    x = decode(pipe.vae, z)           # (B, 4, h, w) -> (B, 3, H, W) in [0, 1] fp32
    to_pil(x)                         # -> list of PIL images
    vae_scale_factor(pipe), resolution(pipe)   # 8 and 512 on SD v1; 4 and 32 on the toy model

Latents are `(z - shift_factor) * scaling_factor` of the VAE posterior mean, as diffusers' pipelines
scale them (`shift_factor` is None on SD v1/v2, so there it is the plain scaling). `encode` and
`decode` take the VAE or the whole pipeline.
"""

import numpy as np
import torch
from PIL import Image


def _vae(vae_or_pipe):
    return getattr(vae_or_pipe, "vae", vae_or_pipe)


def _shift(vae) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


def vae_scale_factor(pipe) -> int:
    """How many pixels one latent cell covers: 2 ** (VAE blocks - 1) (SD: 8, toy: 4)."""
    return 2 ** (len(_vae(pipe).config.block_out_channels) - 1)


def resolution(pipe) -> int:
    """The image side the model was trained at: UNet sample size times the VAE scale (SD v1: 512, toy: 32)."""
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else min(size)
    return int(size) * vae_scale_factor(pipe)


def as_tensor(images) -> torch.Tensor:
    """PIL image(s) or a `(B, 3, H, W)` tensor in [0, 1] -> `(B, 3, H, W)` fp32 in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images[None] if images.dim() == 3 else images
    images = [images] if isinstance(images, Image.Image) else list(images)
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


@torch.no_grad()
def encode(vae, images) -> torch.Tensor:
    """Clean latents `(B, 4, h, w)` fp32 of images (PIL, a list of them, or `(B, 3, H, W)` in [0, 1]):
    the VAE posterior mean, shifted and scaled."""
    vae = _vae(vae)
    x = as_tensor(images).to(vae.device, vae.dtype) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    z = vae.encode(x).latent_dist.mean
    return ((z - _shift(vae)) * vae.config.scaling_factor).float()


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents `(B, 4, h, w)` -> images `(B, 3, H, W)` fp32 in [0, 1]."""
    vae = _vae(vae)
    x = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor + _shift(vae), return_dict=False)[0]
    return (x.float() / 2 + 0.5).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list:
    """`(B, 3, H, W)` in [0, 1] -> list of PIL RGB images."""
    arr = (images.detach().float().permute(0, 2, 3, 1).cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]
