"""`studio edit`: edit a real image by changing its prompt.

    studio edit --image cat.png --source "a cat on a sofa" --target "a tiger on a sofa"
    studio edit --image shape.png --source "a red circle" --target "a blue circle" --method direct --blend 'red | blue'
    studio edit --image shape.png --source "a red circle" --target "a red circle" --reweight red=2 --save-inversion shape.inv.safetensors
    studio edit --inversion shape.inv.safetensors --source "a red circle" --target "a green circle"   # no second inversion

Writes input.png (the image as the model saw it), reconstruction.png, one edit-*.png per target,
blend-mask-*.png with --blend, and grid.png. Torch and the models are imported only when it runs.
"""

import argparse
import time
from pathlib import Path


from . import METHODS
from .options import parse_blend, parse_reweight


class DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless its help already says it (or it has none)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def register(sub) -> None:
    from studio.cli import add_model_args

    p = sub.add_parser(
        "edit",
        help="edit a real image: invert it, then change the prompt (prompt-to-prompt)",
        description="Invert an image (null-text, negative-prompt, direct or DDIM inversion) and edit it with prompt-to-prompt.",
        formatter_class=DefaultsOnce,
    )
    add_model_args(p)
    p.add_argument(
        "--image", help="the image to edit (any size: centre-cropped or padded to a square, then resized to the model's resolution)"
    )
    p.add_argument("--source", required=True, help="a prompt that describes the image")
    p.add_argument("--target", action="append", required=True, help="the edited prompt (repeat for several edits of one inversion)")
    p.add_argument("--method", choices=METHODS, default=None, help="inversion method (default: null-text, or the --inversion file's)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (ignored with --inversion)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance of the edit (ignored with --inversion)")
    p.add_argument("--fit", choices=("crop", "pad"), default="crop", help="how a non-square image is made square")
    p.add_argument(
        "--mode", choices=("auto", "replace", "refine"), default="auto", help="replace needs the same number of words; refine aligns tokens"
    )
    p.add_argument("--cross", type=float, default=0.8, help="fraction of steps that copy the source's cross-attention")
    p.add_argument("--self", dest="self_steps", type=float, default=0.5, help="fraction of steps that copy the source's self-attention")
    p.add_argument(
        "--blend",
        default=None,
        metavar="WORDS",
        help="local blend: words of both prompts ('circle'), or 'SOURCE WORDS | TARGET WORDS' ('red | blue')",
    )
    p.add_argument(
        "--reweight",
        action="append",
        default=[],
        metavar="WORD=SCALE",
        help="scale target words' attention: 'blue=2, striped=0.5' (or repeat the flag)",
    )
    p.add_argument(
        "--null-init",
        choices=("source", "empty"),
        default="source",
        help="null-text: start from the source prompt's embedding or the empty prompt's (official)",
    )
    p.add_argument(
        "--target-null",
        choices=("shared", "empty"),
        default="shared",
        help="null-text / negative-prompt: the targets share the source's fitted embedding (the paper) or take the empty prompt's "
        "(benchmarks/editing_table.md: keeps more on the toy world)",
    )
    p.add_argument("--inner-steps", type=int, default=10, help="null-text: at most this many Adam steps per timestep")
    p.add_argument("--offset-target", action="store_true", help="direct: add the source's offsets to the target too")
    p.add_argument("--inversion", default=None, help="reuse an inversion saved with --save-inversion (skips inverting)")
    p.add_argument("--save-inversion", default=None, help="write the inversion here (.safetensors) for later edits")
    p.add_argument("--out", default="outputs/edit", help="output folder")
    p.set_defaults(fn=cmd_edit)


def inversion_config(args):
    from inversion import DDIMInversionConfig, DirectInversionConfig, NegativePromptConfig, NullTextConfig

    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance)
    method = args.method or "null-text"
    if method == "null-text":
        return NullTextConfig(**common, null_init=args.null_init, num_inner_steps=args.inner_steps)
    if method == "direct":
        return DirectInversionConfig(**common, offset_target=args.offset_target)
    if method == "negative-prompt":
        return NegativePromptConfig(**common)
    return DDIMInversionConfig(**common)


def cmd_edit(args) -> int:
    from tqdm.auto import tqdm

    from studio.cli import load_from_args
    from studio.paths import slug
    from studio.images import make_grid

    from .editing import EditConfig, edit
    from .result import InversionResult

    if args.image is None and args.inversion is None:
        raise ValueError("give --image (or --inversion with a saved inversion)")
    config = EditConfig(
        mode=args.mode,
        cross_replace_steps=args.cross,
        self_replace_steps=args.self_steps,
        reweight=parse_reweight(args.reweight) or None,
        blend_words=parse_blend(args.blend),
        target_null=args.target_null,
    )
    inversion = InversionResult.load(args.inversion) if args.inversion else None
    pipe = load_from_args(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    method = inversion.method if inversion is not None else args.method or "null-text"
    steps = inversion.num_inference_steps if inversion is not None else args.steps
    total = steps * (1 if inversion is not None else 3 if method == "null-text" else 2)
    desc = "editing" if inversion is not None else f"{method} inversion + edit"
    bars = []  # created on the first step, so that errors found before any work print without a bar

    def step(info):
        if not bars:
            bars.append(tqdm(desc=desc, unit="step", total=total))
        bars[0].update(1)

    try:
        result = edit(
            pipe,
            args.image,
            args.source,
            args.target,
            args.method,
            config=config,
            inversion_config=None if inversion is not None else inversion_config(args),
            inversion=inversion,
            fit=args.fit,
            callback=step,
        )
    finally:
        for bar in bars:
            bar.close()
    note = result.inversion.stats.get("image")
    if note and inversion is None:
        print(note)
    result.image.save(out_dir / "input.png")
    result.reconstruction.save(out_dir / "reconstruction.png")
    for k, (target, image) in enumerate(zip(args.target, result.edits)):
        image.save(out_dir / f"edit-{k}-{slug(target)}.png")
        if result.blend_mask is not None:
            from PIL import Image

            Image.fromarray(result.blend_mask[k].astype("uint8") * 255).save(out_dir / f"blend-mask-{k}.png")
    cells = [result.image, result.reconstruction, *result.edits]
    labels = ["input", f"reconstruction ({result.inversion.method})", *args.target]
    make_grid(cells, 1, len(cells), col_labels=labels, title=f"source: {args.source}", cell=224).save(out_dir / "grid.png")
    if args.save_inversion:
        path = result.inversion.save(args.save_inversion)
        print(f"inversion saved to {path} ({path.stat().st_size / 1e6:.2f} MB)")
    s = result.stats
    print(
        f"{result.inversion.method}: inversion {s['inversion_seconds']:.1f} s, edit {s['edit_seconds']:.1f} s ({s['mode']}); "
        f"wrote {len(cells) + 1} images to {out_dir} in {time.time() - t0:.1f} s"
    )
    return 0
