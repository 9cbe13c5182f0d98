"""Shared fixtures: the shipped toy pipeline and judge (loaded once), and a tiny random SD pipeline
built in the test (real diffusers/transformers classes, our CLIP tokenizer) for code paths that
must not depend on the toy model's training."""

import os
from pathlib import Path

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def toy_pipe():
    from studio.loading import load_pipeline

    return load_pipeline("toy", device="cpu")


@pytest.fixture(scope="session")
def judge():
    from studio.toyworld.judge import ToyJudge

    return ToyJudge.load()


def build_tiny_pipe(seed: int = 0, prediction_type: str = "epsilon"):
    """A tiny random StableDiffusionPipeline (32x32 images, 8x8 latents) with the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(str(ROOT / "assets" / "tokenizer"))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipe():
    return build_tiny_pipe()


def toy_model():
    """'toy' (the shipped model and judge), or the folders the environment names (STUDIO_APP_TEST_MODEL / _JUDGE)."""
    model, judge = os.environ.get("STUDIO_APP_TEST_MODEL"), os.environ.get("STUDIO_APP_TEST_JUDGE")
    if model:
        return model, judge
    if not (ROOT / "assets" / "toy-model" / "model_index.json").is_file() or not (ROOT / "assets" / "toy-judge").is_dir():
        pytest.skip("the toy model (assets/toy-model, assets/toy-judge) is not there")
    return "toy", None
