"""The `studio` command line.

    studio generate --prompt "a red triangle" --prompt "a blue star" --seeds 4
    studio toyworld train            # retrain the toy world from scratch (resumable; never into assets/ without --install)
    studio toyworld report           # the toy world's quality bars (written to outputs/toyworld-report/)

Every subcommand that loads a model takes --model (default: the shipped toy model), --device,
--dtype and --threads. Other packages add their subcommands through `register(subparsers)`
(`PLUGINS`); they reuse the helpers here: `add_model_args`, `load_from_args`, `DTYPES`,
`RegistryChoices` (argparse choices read from a registry), `positive_int`, `finite_float`, and the
output-folder rules `ensure_writable`, `claim_folder`, `is_own`, `refuse_overwrite`.

Nothing heavy is imported at module level: `studio --help` does not import torch.
"""

import argparse
import importlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from .paths import ASSETS, MARKER, slug


PLUGINS = ("erasers.cli", "inversion.cli", "probes.cli", "apps.cli")  # modules with a register(subparsers) function
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
STUDIO_NAMES = {MARKER, "checkpoint", "model", "model.tmp", "eval", "plugin", "done.json"}  # what the studio writes into a concept folder

__all__ = [
    "DTYPES",
    "MARKER",
    "STUDIO_NAMES",
    "RegistryChoices",
    "add_model_args",
    "add_threads_arg",
    "build_parser",
    "check_folder",
    "claim_folder",
    "ensure_writable",
    "finite_float",
    "is_own",
    "load_from_args",
    "main",
    "physical_cores",
    "positive_int",
    "refuse_overwrite",
    "set_threads",
    "slug",
    "toyworld_train_paths",
]


# ---------------------------------------------------------------- argument types and choices


class RegistryChoices:
    """argparse `choices` read from a registry (`module.NAME`, any mapping or sequence of names) on
    first use, so that building the parser imports nothing heavy. Give the argument a `metavar`
    (argparse would otherwise list the choices while the parser is built) and `%(choices)s` in its
    help to show them."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def names(self) -> list:
        return list(getattr(importlib.import_module(self.module), self.name))

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, value) -> bool:
        return value in self.names()

    def __len__(self) -> int:
        return len(self.names())


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (steps, batch sizes, seeds, prompts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --threads, --text-encoder, --config, --allow-pickle."""
    p.add_argument(
        "--model", default="toy", help="'toy' (default, the shipped toy model), a hub id, a diffusers folder or a .safetensors file"
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    add_threads_arg(p)
    p.add_argument("--text-encoder", default=None, help="a plug-in text encoder folder to use instead of the model's own")
    p.add_argument("--config", default=None, help="local diffusers config folder for a single-file checkpoint")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle weights (.bin/.ckpt); they can run code when loaded")


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for torch (default: $OMP_NUM_THREADS if set, else the physical cores this process may use)",
    )


def load_from_args(args):
    import torch

    from .loading import load_pipeline

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    return load_pipeline(
        args.model, device=args.device, dtype=dtype, allow_pickle=args.allow_pickle, config=args.config, text_encoder=args.text_encoder
    )


# ---------------------------------------------------------------- threads


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads of one core count once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def set_threads(threads: int | None = None) -> int | None:
    """Set torch's intra-op threads: `threads`, else leave an explicit $OMP_NUM_THREADS alone, else the
    physical cores (more threads than cores only slows a loaded machine down). Returns what was set."""
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    n = threads or physical_cores()
    torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------- output folders


def ensure_writable(folder) -> Path:
    """Check, before any work starts, that `folder` can be created and written; creates nothing.

    Raises `ValueError` for a folder under a file or in a place this process cannot write."""
    folder = Path(folder)
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"cannot write to {folder}: {probe} is a file, not a folder; choose another output folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to {folder}: {probe} is not writable ({e.strerror}); choose another output folder") from None
    return folder


def is_own(folder) -> bool:
    """True when the studio created `folder` (it holds the marker file)."""
    return (Path(folder) / MARKER).is_file()


def check_folder(folder, known=STUDIO_NAMES) -> Path:
    """Raise `ValueError` unless the studio may write into `folder`: it is new, empty, marked as the
    studio's own, or holds only names the studio writes (`known`: folders from before the marker).
    Creates nothing; `claim_folder` then creates and marks it."""
    folder = Path(folder)
    ensure_writable(folder)
    if folder.exists() and not is_own(folder):
        if not folder.is_dir():
            raise ValueError(f"{folder} is a file; choose another output folder")
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in known)
        if foreign:
            raise ValueError(
                f"{folder} already holds files the studio did not write ({', '.join(foreign[:3])}); choose another output folder"
            )
    return folder


def claim_folder(folder, known=STUDIO_NAMES) -> Path:
    """Make `folder` an output folder of the studio (checked by `check_folder`), created and marked,
    so that nothing of the user's is overwritten and `--restart` may delete it later. Call it after
    the inputs are checked and before work starts."""
    folder = check_folder(folder, known)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by Erasure Studio: --restart may delete this folder\n")
    return folder


def refuse_overwrite(paths, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Raise `ValueError` when one of `paths` exists in a folder the studio does not own, unless
    `overwrite` (the user asked explicitly); never for anything inside `assets/` without it."""
    for path in map(Path, paths):
        if path.exists() and not overwrite and not is_own(path.parent):
            raise ValueError(f"{path} exists and the studio did not write it; pass {flag} to replace it, or choose another output folder")


def _inside_assets(path) -> bool:
    path, assets = Path(path).resolve(), ASSETS.resolve()
    return path == assets or assets in path.parents


# ---------------------------------------------------------------- generate


def cmd_generate(args) -> int:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give at least one --prompt (or --prompts-file)")
    seeds = args.seed if args.seed else list(range(args.seeds))
    out = ensure_writable(args.out)

    from .images import make_grid
    from .sampling import check_prompt, check_settings

    pipe = load_from_args(args)
    for p in prompts:
        check_prompt(pipe.tokenizer, p)
    check_settings(pipe, args.steps, args.guidance, args.height, args.width, force=args.force)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, s) for p in prompts for s in seeds]
    t0 = time.time()
    from tqdm.auto import tqdm

    from .sampling import sample_many

    with tqdm(total=-(-len(jobs) // args.batch_size) * args.steps, desc="generating", unit="step") as bar:
        images = sample_many(
            pipe,
            prompts,
            seeds,
            batch_size=args.batch_size,
            negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            height=args.height,
            width=args.width,
            force=args.force,
            callback=lambda info: bar.update(1),
        )
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


def _add_generate(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="generate images (PNGs plus a labelled grid)",
        description="Generate images with DDIM and classifier-free guidance.",
    )
    add_model_args(g)
    g.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    g.add_argument("--prompts-file", help="a text file with one prompt per line")
    g.add_argument("--negative-prompt", default="", help="negative prompt (default: empty)")
    g.add_argument("--seed", type=int, action="append", help="a seed (repeat for several); default: 0..seeds-1")
    g.add_argument("--seeds", type=positive_int, default=4, help="how many seeds per prompt when --seed is not given (default 4)")
    g.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
    g.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    g.add_argument(
        "--height", type=positive_int, default=None, help="image height in pixels, a multiple of 8 (default: the model's resolution)"
    )
    g.add_argument(
        "--width", type=positive_int, default=None, help="image width in pixels, a multiple of 8 (default: the model's resolution)"
    )
    g.add_argument("--batch-size", type=positive_int, default=32, help="images denoised at once (default 32; lower it if memory runs out)")
    g.add_argument("--force", action="store_true", help="allow sizes far above the model's resolution (slow, memory-hungry)")
    g.add_argument("--grid", action="store_true", help="write grid.png even for a single image")
    g.add_argument("--out", default="outputs/generate", help="output folder (default outputs/generate)")
    g.set_defaults(fn=cmd_generate)


# ---------------------------------------------------------------- toyworld


def toyworld_train_paths(args) -> tuple[Path, Path]:
    """(work, out) of `studio toyworld train`: out is WORK/export unless --out or --install say otherwise;
    assets/ only with --install, and never for --quick."""
    if args.quick and args.install:
        raise ValueError("--quick trains a few steps only (the model draws noise); it is never installed into assets/")
    default = f"toyworld-without-{args.without}" if args.without else "toyworld"
    work = (
        Path(args.work) if args.work else Path("runs") / (default + "-quick" if args.quick else default)
    )  # --quick never resumes a real run
    out = ASSETS if args.install else Path(args.out) if args.out else work / "export"
    if not args.install and _inside_assets(out):
        raise ValueError(f"--out {out} is inside the shipped assets/; pass --install (without --out) to replace the shipped model")
    return work, out


def cmd_toyworld_train(args) -> int:
    from .toyworld.train import SHIPPED_RECIPE, TrainConfig, judge_folder, train

    if args.without and args.stages != "vae,diffusion,judge":
        raise ValueError("--without trains the diffusion stage only (the VAE and judge are the shipped ones); drop --stages")
    work, out = toyworld_train_paths(args)
    ensure_writable(work)
    ensure_writable(out)
    quick = dict(pool_size=2000, vae_steps=60, diffusion_steps=60, finetune_steps=20, judge_steps=60, checkpoint_every=20)
    recipe = {**(quick if args.quick else SHIPPED_RECIPE), **({"judge_steps": args.judge_steps} if args.judge_steps else {})}
    cfg = TrainConfig(seed=args.seed, without=args.without or "", judge_seed=args.judge_seed, judge_augment=args.judge_augment, **recipe)
    stages = tuple(args.stages.split(","))
    timings = train(cfg, work, out, stages=stages)
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    if args.without:
        print(f"oracle: {out / f'toy-oracle-{args.without}'}")
    else:
        print(f"pipeline: {out / 'toy-model'}   judge: {out / judge_folder(cfg)}")
    if not args.install:
        print("not installed: pass --install to write into assets/ (replaces the shipped files)")
    return 0


REPORT_FILES = ("toyworld_report.json", "toyworld_report.md")


def cmd_toyworld_report(args) -> int:
    out = Path(args.out)
    if _inside_assets(out):
        raise ValueError(f"--out {out} is inside the shipped assets/; choose another folder")
    refuse_overwrite([out / name for name in REPORT_FILES], args.overwrite)
    ensure_writable(out)
    from .toyworld.report import main

    created = not out.exists()
    code = main(args)
    if created:
        (out / MARKER).write_text("written by Erasure Studio\n")
    return code


def _add_toyworld(sub) -> None:
    tw = sub.add_parser("toyworld", help="train or report on the toy world").add_subparsers(dest="toy_command", required=True)
    t = tw.add_parser("train", help="train VAE, text encoder + UNet and judge from scratch (resumable)")
    t.add_argument(
        "--work",
        default=None,
        help="checkpoints and caches, resumed from (default runs/toyworld, runs/toyworld-without-CONCEPT; with --quick, ...-quick)",
    )
    t.add_argument("--out", default=None, help="where toy-model/ and toy-judge/ (or toy-oracle-CONCEPT/) are written (default WORK/export)")
    t.add_argument("--install", action="store_true", help="write into the shipped assets/ folder instead (replaces the shipped model)")
    t.add_argument(
        "--without",
        default=None,
        metavar="CONCEPT",
        help="train an oracle: text encoder + UNet from scratch on the data without this concept",
    )
    t.add_argument("--stages", default="vae,diffusion,judge", help="comma-separated stages to run (default all)")
    t.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    t.add_argument("--judge-seed", type=int, default=None, help="the judge stage's own seed (default: --seed)")
    t.add_argument("--judge-steps", type=int, default=None, help="judge training steps (default 1500, as both shipped judges)")
    t.add_argument(
        "--judge-augment",
        choices=("renders", "generation"),
        default="renders",
        help="judge data: renders (the shipped judge) or generation-like morphs/blends/blur (written to toy-judge-check/)",
    )
    t.add_argument("--quick", action="store_true", help="a few steps of each stage, to check the machinery (never installed)")
    add_threads_arg(t)
    t.set_defaults(fn=cmd_toyworld_train)
    r = tw.add_parser("report", help="judge accuracy and generation fidelity (prints a table, writes JSON and Markdown)")
    add_model_args(r)
    r.add_argument("--seeds", type=positive_int, default=8, help="images per prompt (default 8)")
    r.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
    r.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    r.add_argument(
        "--out", default="outputs/toyworld-report", help="folder for toyworld_report.json and .md (default outputs/toyworld-report)"
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace report files the studio did not write (e.g. the committed ones in benchmarks/results)",
    )
    r.set_defaults(fn=cmd_toyworld_report)


# ---------------------------------------------------------------- the parser and main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Erasure Studio: erase, attack and edit text-to-image diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_toyworld(sub)
    # the other packages add their own subcommands (erase, eval, attack, export, demo, edit, app);
    # imported lazily here so that `studio` itself depends on nothing above it
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
    try:
        set_threads(getattr(args, "threads", None))
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()  # e.g. "CLIPImageProcessor requires torchvision" on import
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        # our errors carry the fix in their message; a stack trace would hide it
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        from .sampling import Cancelled  # a stopped job (torch is loaded by then); say what was kept, no trace

        if not isinstance(e, Cancelled):
            raise
        print(f"stopped: {e}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
