"""Write the weightless diffusers config folders for Stable Diffusion v1.x and v2.x into assets/configs.

`load_pipeline("model.safetensors")` reads an original single-file checkpoint with
`StableDiffusionPipeline.from_single_file(path, config=<folder>, local_files_only=True)`, which needs
a local diffusers folder of the same architecture: model_index.json, the unet / vae / text_encoder /
scheduler configs and the tokenizer files. No weights: they come from the checkpoint.

The architecture numbers are the public ones of the two families, set here in code and written by
the diffusers / transformers config classes themselves (models are built on the meta device, so
nothing is allocated and nothing is downloaded):

    SD v1.x  UNet 320/640/1280/1280, 2 layers per block, 8 heads, cross-attention 768, conv proj_in,
             512 px (64x64 latents), epsilon prediction; text encoder OpenAI CLIP ViT-L/14
             (768-d, 12 layers, quick-GELU); pads with <|endoftext|>.
    SD v2.x  UNet as v1 but head dims (5, 10, 20, 20), cross-attention 1024, linear proj_in/out,
             fp32 attention upcast, 768 px (96x96 latents), v-prediction (SD 2.0-v / 2.1-v); text
             encoder OpenCLIP ViT-H/14 (1024-d, GELU) cut to 23 layers, because SD v2 reads the
             penultimate layer; pads with "!" (id 0), as OpenCLIP does.
    both     VAE 128/256/512/512, 4 latent channels, scaling factor 0.18215; the scaled-linear
             schedule (beta 0.00085 -> 0.012, 1000 steps) with a DDIM scheduler, which is the
             studio's sampler (SD v1.5 itself ships PNDM with the same schedule).

The tokenizer is our own CLIP BPE tokenizer (assets/tokenizer, from scripts/make_tokenizer.py); SD v2
uses the same vocabulary with pad token "!".

    python scripts/make_sd_configs.py [--out assets/configs]
"""

import argparse
import shutil
import sys
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.convert import save_config_folder  # noqa: E402


SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)

# What differs between the two families; everything else is shared (see the module docstring).
VERSIONS = {
    "v1": dict(
        image_size=512,
        attention_head_dim=8,
        cross_attention_dim=768,
        use_linear_projection=False,
        upcast_attention=False,
        prediction_type="epsilon",
        text=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
            projection_dim=768,
            pad_token_id=49407,
        ),
        pad_token="<|endoftext|>",
    ),
    "v2": dict(
        image_size=768,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
        prediction_type="v_prediction",
        text=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            hidden_act="gelu",
            projection_dim=512,
            pad_token_id=0,
        ),
        pad_token="!",
    ),
}


def unet(v: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=v["image_size"] // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        attention_head_dim=v["attention_head_dim"],
        cross_attention_dim=v["cross_attention_dim"],
        use_linear_projection=v["use_linear_projection"],
        upcast_attention=v["upcast_attention"],
    )


def vae(v: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=v["image_size"],
        scaling_factor=0.18215,
    )


def text_encoder(v: dict):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        dropout=0.0,
        initializer_factor=1.0,
        initializer_range=0.02,
        bos_token_id=49406,
        eos_token_id=49407,
        **v["text"],
    )
    config.architectures = ["CLIPTextModel"]
    return CLIPTextModel(config)


def meta_pipeline(version: str):
    """A StableDiffusionPipeline of the real architecture with every weight on the meta device (no memory)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    v = VERSIONS[version]
    with torch.device("meta"):
        models = dict(unet=unet(v), vae=vae(v), text_encoder=text_encoder(v))
    return StableDiffusionPipeline(
        **models,
        tokenizer=CLIPTokenizer.from_pretrained(str(ROOT / "assets" / "tokenizer"), pad_token=v["pad_token"]),
        scheduler=DDIMScheduler(prediction_type=v["prediction_type"], **SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "configs")
    args = parser.parse_args()

    for version in VERSIONS:
        folder = args.out / f"sd-{version}"
        if folder.exists():
            shutil.rmtree(folder)
        save_config_folder(meta_pipeline(version), folder)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"wrote {folder} ({size / 1e6:.1f} MB, no weights)")


if __name__ == "__main__":
    main()
