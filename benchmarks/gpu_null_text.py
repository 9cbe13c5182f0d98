"""GPU check: null-text inversion of one 512x512 image on the SD v1.4 architecture (random weights).

    python benchmarks/gpu_null_text.py                       # on a CUDA machine; ~3-5 minutes
    python benchmarks/gpu_null_text.py --device cpu --resolution 64 --steps 2 --inner 1   # a CPU smoke test

The UNet, VAE and CLIP text encoder are built from the SD v1.4 configs in code (no download);
the tokenizer is the project's CLIP BPE tokenizer in assets/. Random weights make the optimisation's
early stop meaningless, so the timings are for the worst case (every timestep runs all 10 Adam
steps: the notebook's "50 x (1 + 10 + 1)" UNet passes), which is what the paper's "about a minute
on an A100" bounds; on real weights the early stop (and our start from the source prompt) cut it.

Measured: seconds and peak GPU memory of our null-text inversion (fp32, the pipeline in fp16), of
the official notebook's loop on the same image (fp32 pipeline, as the notebook), of
negative-prompt / direct inversion, and of one prompt-to-prompt edit. Prints a table and writes
benchmarks/results/gpu_null_text.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sd14_pipeline(device, dtype, resolution=512):
    """A StableDiffusionPipeline with SD v1.4's architecture and random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=resolution // 8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=resolution,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    tokenizer = CLIPTokenizer.from_pretrained(str(ROOT / "assets" / "tokenizer"))
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
    return pipe.to(device, dtype)


def test_image(resolution):
    from PIL import Image

    from studio.toyworld.render import render

    return Image.fromarray(render({"shape": "star", "colour": "red", "style": "striped", "background": "light"}, seed=0).image).resize(
        (resolution, resolution), Image.LANCZOS
    )


def measure(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return out, seconds, peak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_null_text.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --resolution 64 --steps 2 for a smoke test")
        return 1

    from benchmarks.editing_table import official_null_text
    from inversion import DirectInversionConfig, NegativePromptConfig, NullTextConfig, edit, invert

    half = torch.float16 if device.type == "cuda" else torch.float32
    image = test_image(args.resolution)
    prompt = "a striped red star on a light background"
    rows = {}

    pipe = sd14_pipeline(device, half, args.resolution)
    cfg = NullTextConfig(num_inference_steps=args.steps, num_inner_steps=args.inner, early_stop_epsilon=-1.0, early_stop_slope=0.0)
    inv, seconds, peak = measure(lambda: invert(pipe, image, prompt, "null-text", cfg), device)
    rows["null-text (ours), worst case: all inner steps"] = {
        "seconds": seconds,
        "peak_gib": peak,
        "adam_steps": int(sum(inv.stats["inner_steps"])),
        "pipeline_dtype": str(half),
    }
    for name, method, cfg in [
        ("negative-prompt", "negative-prompt", NegativePromptConfig(args.steps)),
        ("direct", "direct", DirectInversionConfig(args.steps)),
    ]:
        inv, seconds, peak = measure(lambda: invert(pipe, image, prompt, method, cfg), device)
        rows[name] = {"seconds": seconds, "peak_gib": peak, "pipeline_dtype": str(half)}
    out, seconds, peak = measure(
        lambda: edit(pipe, None, prompt, "a striped blue star on a light background", inversion=inv, blend_words="star"), device
    )
    rows["prompt-to-prompt edit (direct inversion, replace + local blend)"] = {
        "seconds": seconds,
        "peak_gib": peak,
        "pipeline_dtype": str(half),
    }
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not args.skip_official:
        pipe = sd14_pipeline(device, torch.float32, args.resolution)  # the notebook loads SD v1.4 in fp32
        (inv, seconds, peak) = measure(
            lambda: official_null_text(pipe, image, prompt, steps=args.steps, inner=args.inner, epsilon=-1.0), device
        )
        rows["null-text, official notebook loop, worst case"] = {"seconds": seconds, "peak_gib": peak, "pipeline_dtype": "torch.float32"}

    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "resolution": args.resolution,
        "steps": args.steps,
        "inner_steps": args.inner,
        "torch": torch.__version__,
        "rows": rows,
        "paper": "about 1 minute per image on an A100 (as quoted in AUTOMATIC1111 #5287)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=1))
    print(f"{info['device']}, {args.resolution}x{args.resolution}, {args.steps} steps, at most {args.inner} Adam steps per step")
    print(f"{'':70s} {'seconds':>8s} {'peak GiB':>9s}")
    for name, r in rows.items():
        print(f"{name:70s} {r['seconds']:8.1f} {r['peak_gib']:9.2f}")
    print(f"paper: {info['paper']}")
    return 0 if all(np.isfinite(r["seconds"]) for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
