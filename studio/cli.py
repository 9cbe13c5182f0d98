"""The `studio` command line.

    studio generate --prompt "a red triangle" --prompt "a blue star" --seeds 4
    studio toyworld train            # retrain the toy world from scratch (resumable)
    studio toyworld report           # the toy world's quality bars

Every subcommand takes --model (default: the shipped toy model), --device and --dtype.
"""

import argparse
import importlib
import re
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm


PLUGINS = ("erasers.cli", "inversion.cli", "apps.cli")  # modules with a register(subparsers) function
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy", help="'toy' (default, the shipped toy model), a hub id, a diffusers folder or a .safetensors file")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    p.add_argument("--text-encoder", default=None, help="a plug-in text encoder folder to use instead of the model's own")
    p.add_argument("--config", default=None, help="local diffusers config folder for a single-file checkpoint")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle weights (.bin/.ckpt); they can run code when loaded")


def load_from_args(args):
    import torch

    from .loading import load_pipeline

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    return load_pipeline(
        args.model, device=args.device, dtype=dtype, allow_pickle=args.allow_pickle, config=args.config, text_encoder=args.text_encoder
    )


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "prompt"


def cmd_generate(args) -> int:
    from .images import make_grid
    from .sampling import check_prompt, sample

    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give at least one --prompt (or --prompts-file)")
    seeds = args.seed if args.seed else list(range(args.seeds))
    pipe = load_from_args(args)
    for p in prompts:
        check_prompt(pipe.tokenizer, p)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, s) for p in prompts for s in seeds]
    images = []
    t0 = time.time()
    n_batches = -(-len(jobs) // args.batch_size)
    with tqdm(total=n_batches * args.steps, desc="generating", unit="step") as bar:
        for i in range(0, len(jobs), args.batch_size):
            chunk = jobs[i : i + args.batch_size]
            res = sample(
                pipe,
                [p for p, _ in chunk],
                negative_prompt=args.negative_prompt,
                seed=[s for _, s in chunk],
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                height=args.height,
                width=args.width,
                callback=lambda info: bar.update(1),
            )
            images += res.images
    paths = []
    for k, ((p, s), im) in enumerate(zip(jobs, images)):
        path = out / f"{k // len(seeds):02d}-{slug(p)}-seed{s}.png"
        im.save(path)
        paths.append(path)
    print(f"wrote {len(paths)} images to {out} in {time.time() - t0:.1f} s")
    if len(jobs) > 1 or args.grid:
        grid = make_grid(images, len(prompts), len(seeds), row_labels=prompts, col_labels=[f"seed {s}" for s in seeds])
        grid.save(out / "grid.png")
        print(f"grid: {out / 'grid.png'}")
    return 0


def cmd_toyworld_train(args) -> int:
    from .loading import ASSETS
    from .toyworld.train import SHIPPED_RECIPE, TrainConfig, train

    if args.quick and args.install:
        raise ValueError("--quick trains a few steps only (the model draws noise); it is never installed into assets/")
    if args.without and args.stages != "vae,diffusion,judge":
        raise ValueError("--without trains the diffusion stage only (the VAE and judge are the shipped ones); drop --stages")
    cfg = TrainConfig(seed=args.seed, without=args.without or "", **SHIPPED_RECIPE)
    if args.quick:
        cfg = TrainConfig(
            seed=args.seed, without=args.without or "", pool_size=2000, vae_steps=60, diffusion_steps=60, finetune_steps=20, judge_steps=60, checkpoint_every=20
        )
    work = Path(args.work) if args.work else Path("runs") / (f"toyworld-without-{args.without}" if args.without else "toyworld")
    out = ASSETS if args.install else Path(args.out) if args.out else work / "export"
    stages = tuple(args.stages.split(","))
    timings = train(cfg, work, out, stages=stages)
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    if args.without:
        print(f"oracle: {out / f'toy-oracle-{args.without}'}")
    else:
        print(f"pipeline: {out / 'toy-model'}   judge: {out / 'toy-judge'}")
    if not args.install:
        print("not installed: pass --install to write into assets/ (replaces the shipped files)")
    return 0


def cmd_toyworld_report(args) -> int:
    from .toyworld.report import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Erasure Studio: erase, attack and edit text-to-image diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images (PNGs plus a labelled grid)", description="Generate images with DDIM and classifier-free guidance.")
    _add_model_args(g)
    g.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    g.add_argument("--prompts-file", help="a text file with one prompt per line")
    g.add_argument("--negative-prompt", default="", help="negative prompt (default: empty)")
    g.add_argument("--seed", type=int, action="append", help="a seed (repeat for several); default: 0..seeds-1")
    g.add_argument("--seeds", type=int, default=4, help="how many seeds per prompt when --seed is not given (default 4)")
    g.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    g.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--grid", action="store_true", help="write grid.png even for a single image")
    g.add_argument("--out", default="outputs/generate", help="output folder (default outputs/generate)")
    g.set_defaults(fn=cmd_generate)

    tw = sub.add_parser("toyworld", help="train or report on the toy world").add_subparsers(dest="toy_command", required=True)
    t = tw.add_parser("train", help="train VAE, text encoder + UNet and judge from scratch (resumable)")
    t.add_argument("--work", default=None, help="checkpoints and caches, resumed from (default runs/toyworld, or runs/toyworld-without-CONCEPT)")
    t.add_argument("--out", default=None, help="where toy-model/ and toy-judge/ (or toy-oracle-CONCEPT/) are written (default WORK/export)")
    t.add_argument("--install", action="store_true", help="write into the shipped assets/ folder instead (replaces the shipped model)")
    t.add_argument("--without", default=None, metavar="CONCEPT", help="train an oracle: text encoder + UNet from scratch on the data without this concept")
    t.add_argument("--stages", default="vae,diffusion,judge", help="comma-separated stages to run (default all)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quick", action="store_true", help="a few steps of each stage, to check the machinery")
    t.set_defaults(fn=cmd_toyworld_train)
    r = tw.add_parser("report", help="judge accuracy and generation fidelity (prints a table, writes JSON)")
    _add_model_args(r)
    r.add_argument("--seeds", type=int, default=8)
    r.add_argument("--steps", type=int, default=50)
    r.add_argument("--guidance", type=float, default=7.5)
    r.add_argument("--json", default="benchmarks/results/toyworld_report.json")
    r.set_defaults(fn=cmd_toyworld_report)

    # the other packages add their own subcommands (erase, eval, attack, export, edit, app); imported
    # lazily here so that `studio` itself depends on nothing above it
    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # e.g. "CLIPImageProcessor requires torchvision" on import
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        # our errors carry the fix in their message; a stack trace would hide it
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
