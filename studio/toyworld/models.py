"""Architectures of the toy world: a tiny Stable Diffusion made of the real diffusers/transformers
classes, and the judge that reads concepts off an image.

Sizes (chosen so that training fits in well under 2 hours on 2 CPU cores and every SD code path,
cross-attention included, is exercised):

    VAE            AutoencoderKL, 32x32x3 <-> 8x8x4 latents, channels (32, 64, 64)
    text encoder   CLIPTextModel, full 49,408-token CLIP vocabulary, width 64, 4 layers, 4 heads, 77 positions
    UNet           UNet2DConditionModel, channels (64, 128, 128), cross-attention at every level, context width 64
    scheduler      DDIM with SD's betas (scaled_linear 0.00085 -> 0.012, 1000 steps, steps_offset 1)
    judge          a small CNN with four heads: shape, colour, style (each with "none") and background
"""

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from .grammar import ATTRIBUTES, NONE


# SD v1.x noise schedule; the toy model uses it unchanged so that ESD/AdvUnlearn timesteps mean the same.
SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


def build_text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=64,
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULE)


def build_train_scheduler() -> DDPMScheduler:
    kw = {k: v for k, v in SCHEDULE.items() if k not in ("set_alpha_to_one",)}
    return DDPMScheduler(**kw)


# ---------------------------------------------------------------- judge

HEADS = {
    "shape": ATTRIBUTES["shape"] + (NONE,),
    "colour": ATTRIBUTES["colour"] + (NONE,),
    "style": ATTRIBUTES["style"] + (NONE,),
    "background": ATTRIBUTES["background"],
}


def _block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


class JudgeNet(nn.Module):
    """CNN over 32x32 RGB in [-1, 1]; returns a dict of logits, one entry per attribute in `HEADS`."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _block(3, width),  # 32x32
            nn.AvgPool2d(2),
            _block(width, 2 * width),  # 16x16
            nn.AvgPool2d(2),
            _block(2 * width, 4 * width),  # 8x8
            nn.AvgPool2d(2),
            _block(4 * width, 4 * width),  # 4x4
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.heads = nn.ModuleDict({a: nn.Linear(4 * width, len(v)) for a, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict:
        h = self.features(x)  # (B, 4w)
        return {a: head(h) for a, head in self.heads.items()}
