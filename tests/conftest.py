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


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (its folder on sys.path, for its `_util` and sibling imports)."""
    import importlib.util
    import sys

    path = ROOT / "benchmarks" / f"{name}.py"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def toy_pipe():
    from studio.loading import load_pipeline

    return load_pipeline("toy", device="cpu")


@pytest.fixture(scope="session")
def judge():
    from studio.toyworld.judge import ToyJudge

    return ToyJudge.load()


# ---------------------------------------------------------------- the toy erasure tests' shared evaluation
# One prompt set and sampler budget for the toy erasure tests (ESD, DoCo, AdvUnlearn), so the original model is
# sampled and judged once per session (`original_shapes`) and each test samples only its erased model. 20 DDIM
# steps: the toy model samples well with 20-25 (the AdvUnlearn preset trains with 20); on the original model the
# judge sees a triangle in 100% of the 24 triangle images (direct and synonyms) and the right shape in 97% of the
# 32 others at 20 steps, as at 25.
TOY_EVAL = {"seeds": 2, "num_inference_steps": 20}
TARGET_FORMS = {"direct": 8, "synonym": 4}  # triangle prompts of each form
OTHER_SHAPES = {"circle": 4, "square": 4, "star": 4, "cross": 4}  # direct prompts of each other shape
HAS_TOY = (ROOT / "assets" / "toy-model" / "model_index.json").is_file() and (ROOT / "assets" / "toy-judge").is_dir()


def judge_shapes(pipe, judge, concept: str = "triangle") -> dict:
    """The judged shape (the shape head's top-1, as `ToyJudge.shows`) of every image of the shared toy
    evaluation: {"direct": [...], "synonym": [...]} for `concept`'s prompts and {shape: [...]} for the others,
    `TOY_EVAL["seeds"]` images per prompt, all sampled in one batched call."""
    from erasers.evaluate import EvalConfig, generate
    from studio.toyworld.captions import prompts_for

    cfg = EvalConfig(**TOY_EVAL)
    groups = {form: [p for p, _ in prompts_for(concept, form, n)] for form, n in TARGET_FORMS.items()}
    groups.update({s: [p for p, _ in prompts_for(s, "direct", n)] for s, n in OTHER_SHAPES.items() if s != concept})
    shapes = iter(p["shape"] for p in judge.predict(generate(pipe, [p for ps in groups.values() for p in ps], cfg)))
    return {g: [next(shapes) for _ in range(len(ps) * cfg.seeds)] for g, ps in groups.items()}


def shown(verdicts: dict, groups, shape: str) -> float:
    """Share of the images of `groups` judged to show `shape`."""
    hits = [s == shape for g in groups for s in verdicts[g]]
    return sum(hits) / len(hits)


def kept(verdicts: dict, shapes) -> float:
    """Share of the other shapes' images judged as the shape their prompt asked for."""
    hits = [s == g for g in shapes for s in verdicts[g]]
    return sum(hits) / len(hits)


@pytest.fixture(scope="session")
def original_shapes(judge):
    """`judge_shapes` of the unchanged toy model, computed once per session."""
    if not HAS_TOY:
        pytest.skip("the toy model (assets/toy-model, assets/toy-judge) is not there")
    from studio.loading import load_pipeline

    return judge_shapes(load_pipeline("toy", device="cpu"), judge)


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
