"""Inversion and editing on the toy world: reconstruction, judged attribute edits, speed.

    OMP_NUM_THREADS=1 python benchmarks/editing_table.py                 # the full table (toy model, 8 images)
    OMP_NUM_THREADS=1 python benchmarks/editing_table.py --quick         # 2 images, to check the machinery
    OMP_NUM_THREADS=1 python benchmarks/editing_table.py --edits --images 40            # the PIE-Bench-style edit table (cached cells)
    OMP_NUM_THREADS=1 python benchmarks/editing_table.py --beyond                       # reconstruction / speed outside the grammar
    OMP_NUM_THREADS=1 python benchmarks/editing_table.py --erase-edit --erasers esd-x uce rece   # edits with the triangle erased
    OMP_NUM_THREADS=1 python benchmarks/editing_table.py --summarise                    # rewrite the md from the json and the cells

Images are rendered by the toy world's renderer, so they are *real* images for the model (it never
generated them) and come with their labels and object masks. For each image:

* Reconstruction: PSNR / SSIM against the rendered image of each method's reconstruction at
  guidance 7.5, beside the VAE ceiling (encode then decode) and the w = 1 DDIM round trip.
* Editing (with each method's inversion, and with the official loop's null-text embeddings): four
  edits that each change one attribute (colour, shape, style, background) by swapping one word of
  the prompt (attention replace; no local blend unless --blend: on the toy its mask is most of the
  image, which is measured and reported), judged by the toy judge: the target attribute changed as
  asked, the other three kept, and the object's mask kept in place (IoU of the edit's object mask,
  estimated from the distance to the background colour, with the render's true mask).
* Speed: wall time and UNet evaluations (forward passes counted per batch row; backward passes)
  of each inversion (also of our null-text with early-stop thresholds x0.3, and from the empty
  prompt's embedding, the official start, to separate what the start and what the loop bring),
  and of null-text inversion as a straightforward loop that follows the official notebook, run
  side by side on the same images in the same process (in alternating order), both as the
  notebook leaves the UNet (weights trainable, so every backward pass also computes weight
  gradients) and with the UNet frozen.

Writes benchmarks/results/editing_table.json (everything, per image) and editing_table.md (tables).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inversion import METHODS, EditConfig, InversionResult, edit, invert, reconstruct  # noqa: E402
from inversion.common import embed  # noqa: E402
from studio.latents import decode as decode_latents, encode as encode_image, to_pil  # noqa: E402
from inversion.null_text import NullTextConfig  # noqa: E402
from studio.images import psnr, ssim  # noqa: E402
from studio.toyworld.grammar import ATTRIBUTES  # noqa: E402
from studio.toyworld.render import render, sample_labels  # noqa: E402


TEMPLATE = "a {style} {colour} {shape} on a {background} background"
STRICT = "null-text, early stop x0.3"  # our null-text with the official early-stop thresholds times 0.3: the quality/speed knob
EMPTY = "null-text, empty init"  # our null-text loop from the official start (the empty prompt's embedding)
ATTRS = ("colour", "shape", "style", "background")


# ---------------------------------------------------------------- counting UNet work


class UnetCounter:
    """Counts forward rows and backward passes of a UNet through hooks (also on copies made while attached)."""

    def __init__(self, unet):
        self.forward = 0
        self.backward = 0
        self.handle = unet.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        self.forward += sample.shape[0]
        out = output[0] if isinstance(output, tuple) else output.sample
        if out.requires_grad:
            out.register_hook(self._backward)

    def _backward(self, grad):
        self.backward += 1
        return grad

    def reset(self):
        self.forward = self.backward = 0

    def close(self):
        self.handle.remove()


# ---------------------------------------------------------------- the official notebook's null-text loop, written out plainly


def _next_step(scheduler, eps, t, x):
    """The notebook's `next_step`: from level t - 20 (alpha-bar_0 below zero) to level t."""
    t_prev = min(int(t) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps, 999)
    a_prev = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    a_next = scheduler.alphas_cumprod[int(t)]
    x0 = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
    return a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps


def _prev_step(scheduler, eps, t, x):
    """The notebook's `prev_step`: one DDIM step from level t to t - 20."""
    t_prev = int(t) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a_t = scheduler.alphas_cumprod[int(t)]
    a_prev = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def official_null_text(pipe, image, prompt, *, steps=50, guidance=7.5, inner=10, epsilon=1e-5, frozen=False) -> InversionResult:
    """Null-text inversion as the official notebook runs it (NullInversion.invert): DDIM loop with the
    conditional embedding, then per step a new Adam, `loss.backward()`, step, early stop after the step,
    and a batched CFG pass to advance. `frozen=False` leaves the UNet weights trainable, as the notebook does."""
    from diffusers import DDIMScheduler

    unet = pipe.unet
    flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(not frozen)
    try:
        start = time.perf_counter()
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        z0 = encode_image(pipe, image)
        cond, uncond = embed(pipe, prompt), embed(pipe, "")
        latents = [z0]
        latent = z0
        with torch.no_grad():
            for i in range(steps):
                t = scheduler.timesteps[len(scheduler.timesteps) - i - 1]
                latent = _next_step(scheduler, unet(latent, t, encoder_hidden_states=cond).sample, t, latent)
                latents.append(latent)
        nulls = []
        latent_cur = latents[-1]
        for i in range(steps):
            uncond = uncond.clone().detach()
            uncond.requires_grad = True
            optimizer = torch.optim.Adam([uncond], lr=1e-2 * (1.0 - i / 100.0))
            latent_prev = latents[len(latents) - i - 2]
            t = scheduler.timesteps[i]
            with torch.no_grad():
                eps_c = unet(latent_cur, t, encoder_hidden_states=cond).sample
            for _ in range(inner):
                eps_u = unet(latent_cur, t, encoder_hidden_states=uncond).sample
                eps = eps_u + guidance * (eps_c - eps_u)
                loss = F.mse_loss(_prev_step(scheduler, eps, t, latent_cur), latent_prev)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if loss.item() < epsilon + i * 2e-5:
                    break
            nulls.append(uncond[:1].detach())
            with torch.no_grad():
                eps_u, eps_c = unet(torch.cat([latent_cur] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
                latent_cur = _prev_step(scheduler, eps_u + guidance * (eps_c - eps_u), t, latent_cur)
        with torch.no_grad():
            decode_latents(pipe, z0)  # the notebook's invert() also decodes z0 (its "VAE reconstruction")
        seconds = time.perf_counter() - start
    finally:
        for p, flag in zip(unet.parameters(), flags):
            p.requires_grad_(flag)
            p.grad = None
    from inversion.common import fingerprint, scheduler_config
    from studio.latents import resolution as model_resolution

    return InversionResult(
        method="null-text",
        prompt=prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latent_T=latents[-1].detach().clone(),
        image_latent=z0,
        scheduler_config=scheduler_config(pipe),
        null_embeddings=torch.cat(nulls),
        resolution=model_resolution(pipe),
        fingerprint=fingerprint(pipe),
        stats={"seconds": seconds},
    )


# ---------------------------------------------------------------- the toy world's images, prompts and masks


def dataset(n: int, seed: int = 100) -> list:
    """n rendered images with all four attributes drawn from the seed, and their full prompts."""
    items = []
    for k in range(n):
        r = render(None, seed=seed + k)
        items.append({"seed": seed + k, "labels": r.labels, "image": r.image, "mask": r.mask, "prompt": TEMPLATE.format(**r.labels)})
    return items


def swap(labels: dict, attribute: str, k: int) -> str:
    """Another value of `attribute` (deterministic in k)."""
    values = [v for v in ATTRIBUTES[attribute] if v != labels[attribute]]
    return values[k % len(values)]


def object_mask(image: np.ndarray, threshold: float = 40.0) -> np.ndarray:
    """The object's pixels: far (max channel difference) from the background colour, the median of the border."""
    img = np.asarray(image, dtype=np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    return np.abs(img - background).max(-1) > threshold


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# ---------------------------------------------------------------- PIE-Bench-style metrics, exact on the toy's masks


def ideal_edit(item: dict, attribute: str, new: str):
    """The render of the target labels with the image's random stream: the same position, size, jitter and
    background noise, i.e. the edit a perfect editor makes. `dataset` drew the labels from the seed first, so
    the same draws are made (and checked) before the target labels are rendered."""
    rng = np.random.default_rng(item["seed"])
    if sample_labels(rng) != item["labels"]:
        raise ValueError(f"item {item['seed']} was not drawn by dataset(); its labels do not come from its seed")
    return render({**item["labels"], attribute: new}, rng=rng)


def region_metrics(a, b, region: np.ndarray) -> dict:
    """PSNR, SSIM and MSE of images `a` vs `b` (uint8 HxWx3) on the pixels where `region` (HxW bool) is True.

    PSNR and MSE (in [0, 1] units, as PnPInversion's evaluator) over the region's pixels only; SSIM as the
    PIE-Bench evaluator does: both images multiplied by the region (the rest set to 0), SSIM of the whole.
    Identical on the region: PSNR inf, SSIM 1, MSE 0. An empty region gives NaNs (the evaluator's NaN).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if a.shape != b.shape or a.shape[:2] != region.shape:
        raise ValueError(f"images {a.shape} / {b.shape} and region {region.shape} must have the same height and width")
    if not region.any():
        return {"psnr": float("nan"), "ssim": float("nan"), "mse": float("nan")}
    diff = (a - b)[region] / 255.0
    mse = float(np.mean(diff**2))
    m = region[..., None].astype(np.float64)
    return {
        "psnr": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse)),
        "ssim": ssim((a * m).round().astype(np.uint8), (b * m).round().astype(np.uint8)),
        "mse": mse,
    }


EDIT_VARIANTS = {  # name -> (inversion method, null_init for null-text or None, EditConfig overrides)
    "ddim": ("ddim", None, {}),
    "null-text": ("null-text", None, {}),
    "null-text, shared null (paper)": ("null-text", None, {"target_null": "shared"}),
    "null-text, target_null empty": ("null-text", None, {"target_null": "empty"}),
    "direct": ("direct", None, {}),
    "negative-prompt": ("negative-prompt", None, {}),
    "null-text, empty init": ("null-text", "empty", {}),
}
EDIT_CACHE = ROOT / "outputs" / "editing_table"
CELLS = ROOT / "benchmarks" / "results" / "editing_cells"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def cached_inversion(pipe, item: dict, method: str, null_init: str | None, steps: int) -> InversionResult:
    """Inversions are cached under outputs/editing_table/ (safetensors; not committed)."""
    path = EDIT_CACHE / f"{item['seed']}-{method}{'-' + null_init if null_init else ''}-{steps}.safetensors"
    if path.is_file():
        return InversionResult.load(path)
    from PIL import Image

    config = method_config(method, steps)
    if null_init:
        config = NullTextConfig(steps, null_init=null_init)
    inv = invert(pipe, Image.fromarray(item["image"]), item["prompt"], method, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    inv.save(path)
    return inv


def edit_cell(pipe, judge, item: dict, variant: str, edit_cfg: EditConfig, steps: int) -> dict:
    """One image, one variant: the four one-word edits in one batched edit call, judged and measured."""
    method, null_init, overrides = EDIT_VARIANTS[variant]
    t0 = time.perf_counter()
    inv = cached_inversion(pipe, item, method, null_init, steps)
    inverted = time.perf_counter()
    plan = []
    for k, attribute in enumerate(ATTRS):
        new = swap(item["labels"], attribute, item["seed"] + k)
        plan.append((attribute, new, TEMPLATE.format(**{**item["labels"], attribute: new})))
    out = edit(pipe, None, item["prompt"], [t for _, _, t in plan], method, inversion=inv, config=edit_cfg, **overrides)
    record = {
        "seed": item["seed"],
        "variant": variant,
        "source_row_psnr": psnr(out.reconstruction, item["image"]),
        "inversion_seconds": inverted - t0,
        "edit_seconds": time.perf_counter() - inverted,
        "edits": {},
    }
    for (attribute, new, target), image, verdict in zip(plan, out.edits, judge.predict(out.edits)):
        ideal = ideal_edit(item, attribute, new)
        edited = np.asarray(image)
        region = item["mask"] | ideal.mask  # where the object is, before or after
        if attribute == "background":  # what must stay is the object; what must change is the rest
            keep, change = item["mask"] & ideal.mask, ~region
        else:
            keep, change = ~region, region
        record["edits"][attribute] = {
            "target": target,
            "verdict": verdict,
            "changed": verdict[attribute] == new,
            "kept": all(verdict[a] == item["labels"][a] for a in ATTRS if a != attribute),
            "preserved": region_metrics(edited, item["image"], keep),  # PIE-Bench's background preservation (object edits)
            "edited_vs_ideal": region_metrics(edited, ideal.image, change),  # the edited region against the perfect edit
            "iou_ideal": iou(object_mask(edited), ideal.mask),  # structure: the edit's object where the perfect edit's is
            "iou_source": iou(object_mask(edited), item["mask"]),
        }
    return record


def run_edits(args) -> dict:
    """The PIE-Bench-style edit table: cells (image x variant) cached as JSON under benchmarks/results/editing_cells/."""
    from studio.loading import load_pipeline
    from studio.toyworld.judge import ToyJudge

    torch.manual_seed(0)
    pipe = load_pipeline(args.model, device="cpu")
    judge = ToyJudge.load(args.judge)
    edit_cfg = EditConfig(cross_replace_steps=args.cross, self_replace_steps=args.self_steps)
    items = dataset(args.images, seed=args.seed)
    for n, item in enumerate(items):
        for variant in args.variants:
            path = CELLS / slug(variant) / f"{item['seed']}.json"
            if path.is_file():
                continue
            record = edit_cell(pipe, judge, item, variant, edit_cfg, args.steps)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1, default=float))
            tmp.replace(path)
            print(
                f"image {n + 1}/{len(items)} seed {item['seed']} {variant}: {record['inversion_seconds'] + record['edit_seconds']:.0f} s",
                flush=True,
            )
    inversion_alone(pipe, items, args.variants, args.steps)
    return summarise_edits(args.variants)


ALONE = CELLS / "inversion-alone.json"  # {inversion: {seed: PSNR of the inversion's own reconstruction}}


def inversion_key(variant: str) -> str:
    """The cached inversion a variant edits from (variants that differ only in the edit share one)."""
    method, null_init, _ = EDIT_VARIANTS[variant]
    return method + (f"-{null_init}" if null_init else "")


def inversion_alone(pipe, items, variants, steps) -> dict:
    """PSNR of each variant's inversion reconstructed alone (no edit in the batch), for the source row's comparison."""
    done = json.loads(ALONE.read_text()) if ALONE.is_file() else {}
    for variant in variants:
        method, null_init, _ = EDIT_VARIANTS[variant]
        key = inversion_key(variant)
        for item in items:
            if str(item["seed"]) in done.get(key, {}) or not (CELLS / slug(variant) / f"{item['seed']}.json").is_file():
                continue
            rec, _ = reconstruct(pipe, cached_inversion(pipe, item, method, null_init, steps))
            done.setdefault(key, {})[str(item["seed"])] = psnr(rec, item["image"])
    ALONE.write_text(json.dumps(done, indent=1))
    return done


def paired(a: list, b: list) -> dict:
    """Two variants' outcomes on the same edits: both, only a, only b, neither, and the exact two-sided McNemar
    (sign test on the discordant pairs) p-value."""
    from math import comb

    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    tail = sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n if n else 1.0
    return {
        "both": sum(x and y for x, y in zip(a, b)),
        "only_a": only_a,
        "only_b": only_b,
        "neither": sum(not x and not y for x, y in zip(a, b)),
        "p": min(1.0, 2 * tail),
    }


def summarise_edits(variants) -> dict:
    """Rates (count, Wilson interval) and mean metrics per variant and edit kind, over every cached cell."""
    from studio.stats import Rate

    def finite_mean(xs):
        xs = [x for x in xs if np.isfinite(x)]
        return float(np.mean(xs)) if xs else float("nan")

    out = {}
    found = {v: {p.stem for p in (CELLS / slug(v)).glob("*.json")} for v in variants}
    found = {v: seeds for v, seeds in found.items() if seeds}
    common = set.intersection(*found.values()) if found else set()  # every row on the same images
    for variant in found:
        records = [json.loads((CELLS / slug(variant) / f"{seed}.json").read_text()) for seed in sorted(common, key=int)]
        if not records:
            continue
        table = {"images": len(records), "source_row_psnr": finite_mean([r["source_row_psnr"] for r in records])}
        for attribute in (*ATTRS, "all"):
            rows = [r["edits"][a] for r in records for a in (ATTRS if attribute == "all" else (attribute,))]
            table[attribute] = {
                "changed_and_kept": Rate(sum(e["changed"] and e["kept"] for e in rows), len(rows)).as_dict(),
                "changed": Rate(sum(e["changed"] for e in rows), len(rows)).as_dict(),
                "kept": Rate(sum(e["kept"] for e in rows), len(rows)).as_dict(),
                "preserved_psnr": finite_mean([e["preserved"]["psnr"] for e in rows]),
                "preserved_ssim": finite_mean([e["preserved"]["ssim"] for e in rows]),
                "preserved_mse": finite_mean([e["preserved"]["mse"] for e in rows]),
                "edited_vs_ideal_psnr": finite_mean([e["edited_vs_ideal"]["psnr"] for e in rows]),
                "iou_ideal": finite_mean([e["iou_ideal"] for e in rows]),
                "iou_source": finite_mean([e["iou_source"] for e in rows]),
                "seconds": finite_mean([r["inversion_seconds"] + r["edit_seconds"] for r in records]),
            }
        out[variant] = table
        alone = json.loads(ALONE.read_text()).get(inversion_key(variant), {}) if ALONE.is_file() else {}
        if all(str(r["seed"]) in alone for r in records):
            d = [r["source_row_psnr"] - alone[str(r["seed"])] for r in records]
            table["inversion_alone_psnr"] = finite_mean([alone[str(r["seed"])] for r in records])
            table["source_minus_alone"] = {"mean": finite_mean(d), "min": float(np.min(d)), "max": float(np.max(d))}
    reference = "null-text, target_null empty"
    if reference in out:
        by = {v: [json.loads((CELLS / slug(v) / f"{seed}.json").read_text()) for seed in sorted(common, key=int)] for v in out}
        ok = {v: [r["edits"][a]["changed"] and r["edits"][a]["kept"] for r in recs for a in ATTRS] for v, recs in by.items()}
        bg = {v: [r["edits"][a]["preserved"]["psnr"] for r in recs for a in ATTRS] for v, recs in by.items()}
        for v, table in out.items():
            if v == reference:
                continue
            d = [x - y for x, y in zip(bg[reference], bg[v]) if np.isfinite(x) and np.isfinite(y)]
            table["paired_with_reference"] = {
                **paired(ok[reference], ok[v]),
                "reference": reference,
                "preserved_psnr_minus": {
                    "mean": finite_mean(d),
                    "wins": int(sum(x > 0 for x in d)),
                    "n": len(d),
                    "sign_p": paired([x > 0 for x in d], [x < 0 for x in d])["p"],  # sign test: higher vs lower, ties dropped
                },
            }
    return out


def claim_check(pie: dict, reference: str = "null-text, target_null empty", baseline: str = "ddim") -> list:
    """The issue's target, read off the table: the reference's "changed and kept" at least the baseline's and at least
    0.6, its source row within 0.5 dB of the inversion alone; and whether the intervals separate the two."""
    if reference not in pie or baseline not in pie:
        return []
    r, b = pie[reference]["all"]["changed_and_kept"], pie[baseline]["all"]["changed_and_kept"]
    rate_r, rate_b = r["k"] / r["n"], b["k"] / b["n"]
    items = [
        f"{reference} changed and kept {rate_r:.2f} {'>=' if rate_r >= rate_b else '<'} {baseline}'s {rate_b:.2f} "
        f"and {'>=' if rate_r >= 0.6 else '<'} 0.6 (lower bound of its interval {r['low']:.2f})",
        "the intervals "
        + ("overlap: the table does not separate the two" if r["low"] <= b["high"] and b["low"] <= r["high"] else "do not overlap"),
    ]
    d = pie[reference].get("source_minus_alone")
    if d:
        worst = max(abs(d["min"]), abs(d["max"]))
        items.append(
            f"source row within {worst:.3f} dB of the inversion alone on every image ({'within' if worst <= 0.5 else 'outside'} 0.5 dB)"
        )
    q = pie[baseline].get("paired_with_reference")
    if q:
        items.append(
            f"paired on the same edits: {q['only_a']} edits only the reference gets right, {q['only_b']} only {baseline}, McNemar p {q['p']:.2g}"
        )
    return ["", "Target of issue 13: " + "; ".join(items) + "."]


def edits_markdown(pie: dict, settings: dict) -> list:
    from studio.stats import format_rate

    rate = lambda r: format_rate(r["k"], r["n"])  # noqa: E731
    lines = [
        "## Attribute edits, PIE-Bench style",
        "",
        f"Rendered images (seeds from {settings.get('seed', 100)}), each edited four ways (one word: colour, shape, style, background) "
        f"in one batched edit call; P2P replace, cross {settings.get('cross')}, self {settings.get('self_steps')}, no local blend; "
        "judged by the toy judge. Reproduce: `OMP_NUM_THREADS=1 python benchmarks/editing_table.py --edits --images 40` "
        "(cells cached in benchmarks/results/editing_cells/, a stopped run resumes). Every row is over the same images: "
        "those every variant has finished.",
        "",
        "- changed and kept: the edited attribute reads as the target value and the other three as in the original "
        "(the edited region's judged correctness, in place of PIE-Bench's CLIP similarity); 95% Wilson intervals.",
        "- preserved: what must stay, exactly from the renderer's masks: for object edits (colour, shape, style) the pixels outside "
        "the object before and after (PIE-Bench's background preservation: PSNR and MSE x10^4 over those pixels, SSIM of both images "
        "masked as its evaluator does); for background edits the object's pixels.",
        "- vs ideal: PSNR of the edited region against the perfect edit (the target labels rendered with the same seed: same place, "
        "size and noise). IoU: the edit's object mask (distance to the background colour) against the perfect edit's true mask "
        "(structure; PIE-Bench's DINO distance has no toy counterpart).",
        "",
        "| variant | images | edits | changed and kept | changed | kept | preserved PSNR | SSIM | MSE x10^4 | vs ideal PSNR | IoU | source row PSNR |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, t in pie.items():
        a = t["all"]
        lines.append(
            f"| {variant} | {t['images']} | {a['changed_and_kept']['n']} | {rate(a['changed_and_kept'])} | {rate(a['changed'])} | "
            f"{rate(a['kept'])} | {a['preserved_psnr']:.2f} | {a['preserved_ssim']:.3f} | {1e4 * a['preserved_mse']:.1f} | "
            f"{a['edited_vs_ideal_psnr']:.2f} | {a['iou_ideal']:.2f} | {t['source_row_psnr']:.2f} |"
        )
    notes = []
    for variant, t in pie.items():
        if "source_minus_alone" in t:
            d = t["source_minus_alone"]
            notes.append(
                f"- {variant}: source row {t['source_row_psnr']:.2f} dB, the inversion reconstructed alone {t['inversion_alone_psnr']:.2f} dB; "
                f"source minus alone per image {d['mean']:+.3f} [{d['min']:+.3f}, {d['max']:+.3f}] dB"
            )
    if notes:
        lines += ["", "Source row of the edit against the inversion alone (same images):", "", *notes]
    pairs = {v: t["paired_with_reference"] for v, t in pie.items() if "paired_with_reference" in t}
    if pairs:
        ref = next(iter(pairs.values()))["reference"]
        lines += [
            "",
            f"Paired with {ref} on the same edits (changed and kept): both / only {ref} / only the other / neither, exact McNemar "
            "p (two-sided); preserved PSNR: mean paired difference, the edits where it is higher and the sign test's p. The four "
            "edits of an image share its inversion, so the tests' independence is approximate.",
            "",
            "| other variant | both | only reference | only other | neither | McNemar p | preserved PSNR, reference minus other | reference higher | sign p |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v, q in pairs.items():
            b = q["preserved_psnr_minus"]
            lines.append(
                f"| {v} | {q['both']} | {q['only_a']} | {q['only_b']} | {q['neither']} | {q['p']:.2g} | {b['mean']:+.2f} dB | {b['wins']}/{b['n']} | {b['sign_p']:.3g} |"
            )
    lines += claim_check(pie)
    for variant, t in pie.items():
        lines += [
            "",
            f"### {variant}",
            "",
            "| edit | changed and kept | changed | kept | preserved PSNR | SSIM | MSE x10^4 | vs ideal PSNR | IoU (ideal) | IoU (source) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for attribute in (*ATTRS, "all"):
            v = t[attribute]
            lines.append(
                f"| {attribute} | {rate(v['changed_and_kept'])} | {rate(v['changed'])} | {rate(v['kept'])} | {v['preserved_psnr']:.2f} | "
                f"{v['preserved_ssim']:.3f} | {1e4 * v['preserved_mse']:.1f} | {v['edited_vs_ideal_psnr']:.2f} | {v['iou_ideal']:.2f} | "
                f"{v['iou_source']:.2f} |"
            )
    return lines


# ---------------------------------------------------------------- the runs


def method_config(method: str, steps: int):
    from inversion import INVERTERS

    return INVERTERS[method][1](num_inference_steps=steps)


def invert_every_way(
    pipe, image, prompt: str, record: dict, counter, *, steps: int, first_official: bool, official: bool = True, frozen: bool = True
) -> dict:
    """Every inversion of `image` (the official loop, ours and the others), timed and counted, its reconstruction's PSNR /
    SSIM at guidance 7.5 written into record["reconstruction"], its cost into record["speed"]; returns the inversions.
    The official loops run first when `first_official`, last otherwise (alternate per image: drift of the machine's load
    cancels out)."""
    officials = ["official", *(["official-frozen"] if frozen else [])]
    order = [*officials, *METHODS, STRICT, EMPTY] if first_official else [EMPTY, STRICT, *METHODS, *officials]
    if not official:
        order = [m for m in order if not m.startswith("official")]
    inversions = {}
    for name in order:
        counter.reset()
        t0 = time.perf_counter()
        if name.startswith("official"):
            inv = official_null_text(pipe, image, prompt, steps=steps, frozen=name == "official-frozen")
        elif name == STRICT:
            inv = invert(pipe, image, prompt, "null-text", NullTextConfig(steps, early_stop_epsilon=3e-6, early_stop_slope=6e-6))
        elif name == EMPTY:
            inv = invert(pipe, image, prompt, "null-text", NullTextConfig(steps, null_init="empty"))
        else:
            inv = invert(pipe, image, prompt, name, method_config(name, steps))
        seconds = time.perf_counter() - t0
        record["speed"][name] = {"seconds": seconds, "unet_forward": counter.forward, "unet_backward": counter.backward}
        if "inner_steps" in inv.stats:
            inner = [int(k) for k in inv.stats["inner_steps"]]
            record["speed"][name]["adam_steps"] = int(sum(inner))
            record["speed"][name]["steps_without_update"] = sum(k == 0 for k in inner)  # passed the early stop before any update
        inversions[name] = inv
        rec, _ = reconstruct(pipe, inv)
        label = f"null-text (official loop{', frozen' if name == 'official-frozen' else ''})" if name.startswith("official") else name
        record["reconstruction"][label] = {"psnr": psnr(rec, image), "ssim": ssim(rec, image)}
    return inversions


def run(args) -> dict:
    from studio.loading import load_pipeline
    from studio.toyworld.judge import ToyJudge

    torch.manual_seed(0)
    pipe = load_pipeline(args.model, device="cpu")
    judge = ToyJudge.load(args.judge)
    items = dataset(args.images)
    counter = UnetCounter(pipe.unet)
    results = {"images": [], "settings": vars(args).copy()}
    edit_cfg = EditConfig(cross_replace_steps=args.cross, self_replace_steps=args.self_steps)

    for n, item in enumerate(items):
        from PIL import Image

        image = Image.fromarray(item["image"])
        record = {"seed": item["seed"], "labels": item["labels"], "prompt": item["prompt"], "reconstruction": {}, "speed": {}, "edits": {}}
        z0 = encode_image(pipe, image)
        ceiling = to_pil(decode_latents(pipe, z0))[0]
        record["reconstruction"]["vae"] = {"psnr": psnr(ceiling, image), "ssim": ssim(ceiling, image)}
        record["judge_on_render"] = judge.predict([image])[0]
        record["mask_estimator_iou"] = iou(object_mask(item["image"]), item["mask"])

        inversions = invert_every_way(
            pipe, image, item["prompt"], record, counter, steps=args.steps, first_official=n % 2 == 0, official=not args.skip_official
        )
        # w = 1 round trip (reference: what the pivot itself reconstructs)
        ddim_inv = inversions["ddim"]
        w1 = InversionResult(**{**ddim_inv.__dict__, "guidance_scale": 1.0})
        rec, _ = reconstruct(pipe, w1)
        record["reconstruction"]["ddim (w = 1 round trip)"] = {"psnr": psnr(rec, image), "ssim": ssim(rec, image)}

        for method in [*METHODS, EMPTY, "official"] if "official" in inversions else [*METHODS, EMPTY]:
            inv = inversions[method]
            record["edits"][method] = {}
            for k, attribute in enumerate(ATTRS):
                new = swap(item["labels"], attribute, item["seed"] + k)
                target_labels = {**item["labels"], attribute: new}
                target = TEMPLATE.format(**target_labels)
                blend = None
                if args.blend and attribute != "background":
                    blend = (item["labels"]["shape"], target_labels["shape"])
                t0 = time.perf_counter()
                counter.reset()
                out = edit(pipe, None, item["prompt"], target, inv.method, inversion=inv, config=edit_cfg, blend_words=blend)
                edit_seconds = time.perf_counter() - t0
                verdict = judge.predict([out.edit])[0]
                kept = all(verdict[a] == item["labels"][a] for a in ATTRS if a != attribute)
                record["edits"][method][attribute] = {
                    "target": target,
                    "verdict": verdict,
                    "changed": verdict[attribute] == new,
                    "kept": kept,
                    "iou": iou(object_mask(np.asarray(out.edit)), item["mask"]),
                    "seconds": edit_seconds,
                    "unet_forward": counter.forward,
                }
                if args.save_images:
                    folder = Path(args.save_images)
                    folder.mkdir(parents=True, exist_ok=True)
                    out.edit.save(folder / f"{item['seed']}-{method}-{attribute}.png")
                    out.reconstruction.save(folder / f"{item['seed']}-{method}-reconstruction.png")
        # LocalBlend's mask on the toy: the shape word's map for a colour edit (direct inversion)
        new = swap(item["labels"], "colour", item["seed"])
        out = edit(
            pipe,
            None,
            item["prompt"],
            TEMPLATE.format(**{**item["labels"], "colour": new}),
            "direct",
            inversion=inversions["direct"],
            blend_words=item["labels"]["shape"],
        )
        mask = out.blend_mask[0]
        record["blend_mask"] = {
            "object_covered": float((mask & item["mask"]).sum() / item["mask"].sum()),
            "image_fraction": float(mask.mean()),
        }
        results["images"].append(record)
        print(
            f"image {n + 1}/{len(items)} ({item['prompt']}): " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in record["speed"].items()),
            flush=True,
        )
    counter.close()
    results["summary"] = summarise(results["images"])
    return results


def summarise(records: list) -> dict:
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
    recon = {}
    for name in records[0]["reconstruction"]:
        recon[name] = {m: mean([r["reconstruction"][name][m] for r in records]) for m in ("psnr", "ssim")}
    paired = {}
    official = "null-text (official loop)"
    if official in records[0]["reconstruction"]:
        for name in ("null-text", STRICT, EMPTY, "negative-prompt", "direct"):
            d = [r["reconstruction"][name]["psnr"] - r["reconstruction"][official]["psnr"] for r in records]
            paired[name] = {"mean": mean(d), "min": float(np.min(d)), "max": float(np.max(d))}
    speed = {}
    for name in records[0]["speed"]:
        speed[name] = {m: mean([r["speed"][name][m] for r in records]) for m in ("seconds", "unet_forward", "unet_backward")}
        if "adam_steps" in records[0]["speed"][name]:
            speed[name]["adam_steps"] = mean([r["speed"][name]["adam_steps"] for r in records])
    ratios = {}  # total seconds of the reference over total seconds of the method, all images (robust to one slow run)
    for ref in ("official", "official-frozen"):
        if ref in records[0]["speed"]:
            total = sum(r["speed"][ref]["seconds"] for r in records)
            ratios[ref] = {
                m: total / sum(r["speed"][m]["seconds"] for r in records) for m in records[0]["speed"] if not m.startswith("official")
            }
    edits = {}
    for method in records[0]["edits"]:
        edits[method] = {}
        for attribute in (*ATTRS, "all"):
            rows = [r["edits"][method][a] for r in records for a in (ATTRS if attribute == "all" else (attribute,))]
            edits[method][attribute] = {
                "changed": mean([e["changed"] for e in rows]),
                "kept": mean([e["kept"] for e in rows]),
                "changed_and_kept": mean([e["changed"] and e["kept"] for e in rows]),
                "iou": mean([e["iou"] for e in rows]),
                "seconds": mean([e["seconds"] for e in rows]),
            }
    blend = {k: mean([r["blend_mask"][k] for r in records]) for k in ("object_covered", "image_fraction")}
    judge_ok = mean([all(r["judge_on_render"][a] == r["labels"][a] for a in ATTRS) for r in records])
    return {
        "reconstruction": recon,
        "psnr_minus_official_null_text": paired,
        "speed": speed,
        "speedup_vs_official_null_text": ratios,
        "edits": edits,
        "local_blend_mask": blend,
        "judge_accuracy_on_renders": judge_ok,
        "mask_estimator_iou_on_renders": mean([r["mask_estimator_iou"] for r in records]),
    }


def markdown(results: dict) -> str:
    """The md: the reconstruction / speed / edit tables, then the sections run (beyond the renders, erase then edit)."""
    lines = [_markdown_core(results)]
    if results.get("beyond"):
        lines += ["", *beyond_markdown(results["beyond"])]
    if results.get("erase_edit"):
        lines += ["", *erase_edit_markdown(results["erase_edit"])]
    return "\n".join(lines)


def _markdown_core(results: dict) -> str:
    if "summary" not in results:  # only the edit table
        return "\n".join(["# Inversion and editing on the toy world", "", *edits_markdown(results["pie"], results["pie_settings"])])
    s = results["summary"]
    settings = results["settings"]
    lines = [
        "# Inversion and editing on the toy world",
        "",
        f"{settings['images']} rendered images, {settings['steps']} DDIM steps, guidance 7.5; prompt-to-prompt replace, "
        f"cross {settings['cross']}, self {settings['self_steps']}. Reproduce: `OMP_NUM_THREADS=1 python benchmarks/editing_table.py`.",
        "",
        "## Reconstruction (against the rendered image)",
        "",
        "| method | PSNR (dB) | SSIM |",
        "|---|---|---|",
    ]
    for name, v in s["reconstruction"].items():
        lines.append(f"| {name} | {v['psnr']:.2f} | {v['ssim']:.4f} |")
    if s.get("psnr_minus_official_null_text"):
        lines += ["", "PSNR minus the official null-text loop's, paired per image (dB): mean [min, max]", ""]
        for name, d in s["psnr_minus_official_null_text"].items():
            lines.append(f"- {name}: {d['mean']:+.2f} [{d['min']:+.2f}, {d['max']:+.2f}]")
    lines += [
        "",
        "## Speed of the inversion (mean per image, CPU)",
        "",
        "Speed-up: total seconds of the official loop over total seconds of the method, all images, measured side by side "
        "in one run (in alternating order). The machine was shared with other jobs, so seconds are noisy; the UNet counts are exact.",
        "",
        "| method | seconds | UNet forward rows | UNet backward | Adam steps | speed-up vs official loop | vs official loop, frozen UNet |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = s["speedup_vs_official_null_text"]
    for name, v in s["speed"].items():
        r1 = f"{ratios['official'][name]:.1f}x" if name in ratios.get("official", {}) else ""
        r2 = f"{ratios['official-frozen'][name]:.1f}x" if name in ratios.get("official-frozen", {}) else ""
        adam = f"{v['adam_steps']:.0f}" if "adam_steps" in v else ""
        label = {"official": "null-text, official loop", "official-frozen": "null-text, official loop, frozen UNet"}.get(name, name)
        lines.append(f"| {label} | {v['seconds']:.2f} | {v['unet_forward']:.0f} | {v['unet_backward']:.0f} | {adam} | {r1} | {r2} |")
    if "pie" in results:  # the PIE-Bench-style table replaces the 8-image attribute table of the reconstruction run
        return "\n".join([*lines, "", *edits_markdown(results["pie"], results["pie_settings"])])
    lines += ["", "## Attribute edits judged by the toy judge", ""]
    lines += [
        f"Judge accuracy on the renders themselves (all four attributes right): {s['judge_accuracy_on_renders']:.2f}; "
        f"IoU of the mask estimator with the true masks on the renders: {s['mask_estimator_iou_on_renders']:.2f}. "
        "changed: the edited attribute reads as the target value; kept: the other three read as in the original; IoU: object mask of the edit vs the original's.",
        "",
    ]
    b = s["local_blend_mask"]
    lines += [
        f"Local blend: {'on (the shape words) for colour, shape and style edits' if settings['blend'] else 'off'}. "
        f"On the toy model LocalBlend's mask (the shape word's cross-attention, 8x8 maps, threshold 0.3) covers "
        f"{b['object_covered']:.2f} of the object but {b['image_fraction']:.2f} of the image: its word maps follow brightness, not the object.",
        "",
    ]
    for method, table in s["edits"].items():
        lines += [
            f"### {'null-text (official loop)' if method == 'official' else method}",
            "",
            "| edit | changed | kept | changed and kept | mask IoU | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for attribute, v in table.items():
            lines.append(
                f"| {attribute} | {v['changed']:.2f} | {v['kept']:.2f} | {v['changed_and_kept']:.2f} | {v['iou']:.2f} | {v['seconds']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- beyond the renders: images the toy model never saw

BEYOND_CELLS = ROOT / "benchmarks" / "results" / "editing_beyond"


def _draw(background, shapes, *, size=32, supersample=4, texture=None):
    """A PIL drawing at `supersample` x the size, box-downsampled (antialiased edges like the renderer's).
    `shapes`: [(kind, xy in image pixels, fill RGB)], kind one of "polygon", "ellipse", "ring"."""
    from PIL import Image, ImageDraw

    big = size * supersample
    if callable(background):
        canvas = Image.fromarray(background(big))
    else:
        canvas = Image.new("RGB", (big, big), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for kind, xy, fill in shapes:
        xy = [c * supersample for c in xy]
        if kind == "polygon":
            draw.polygon(list(zip(xy[::2], xy[1::2])), fill=tuple(fill))
        elif kind == "ellipse":
            draw.ellipse(xy, fill=tuple(fill))
        elif kind == "ring":
            draw.ellipse(xy, outline=tuple(fill), width=3 * supersample)
        else:
            raise ValueError(f"unknown kind {kind!r}")
    img = np.asarray(canvas, dtype=np.float64)
    if texture is not None:
        img = texture(img, big)
    return img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3)).round().clip(0, 255).astype(np.uint8)


def beyond_images() -> list:
    """Images outside the toy grammar (shape, colour, texture, layout or background it never had), drawn with PIL, each
    with the prompt a user would write (its words outside the grammar too), plus two renders as in-grammar controls
    measured in the same run."""
    rng = np.random.default_rng(7)
    hexagon = [16 + 10 * np.cos(a) if k % 2 == 0 else 16 + 10 * np.sin(a) for a in np.linspace(0, 2 * np.pi, 7)[:-1] for k in (0, 1)]

    def checker(img, big):  # a checkerboard fill inside the ellipse: the ellipse's colour and its tint, 4-pixel cells
        yy, xx = np.mgrid[0:big, 0:big] // (4 * 4)
        inside = np.abs(img - np.array([40, 200, 210])).max(-1) < 1
        tint = img * 0.4 + 255 * 0.6
        return np.where((inside & ((yy + xx) % 2 == 0))[..., None], tint, img)

    def gradient(big):  # pink to teal, left to right
        t = np.linspace(0, 1, big)[None, :, None]
        row = (1 - t) * np.array([235, 150, 190]) + t * np.array([40, 150, 150])
        return np.broadcast_to(row, (big, big, 3)).round().astype(np.uint8)

    def blobs(big):  # a smooth random colour field: no object, no plain background
        coarse = rng.uniform(0, 255, size=(4, 4, 3))
        from PIL import Image

        return np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((big, big), Image.BICUBIC))

    items = [
        ("orange hexagon", _draw((232, 232, 226), [("polygon", hexagon, (250, 130, 20))]), "a solid orange hexagon on a light background"),
        (
            "checkered cyan ellipse",
            _draw((34, 34, 40), [("ellipse", (4, 9, 28, 23), (40, 200, 210))], texture=checker),
            "a checkered cyan ellipse on a dark background",
        ),
        (
            "two objects",
            _draw(
                (232, 232, 226), [("ellipse", (3, 3, 14, 14), (215, 35, 35)), ("polygon", (18, 17, 29, 17, 29, 28, 18, 28), (35, 75, 225))]
            ),
            "a red circle and a blue square on a light background",
        ),
        (
            "triangle on a gradient",
            _draw(gradient, [("polygon", (16, 5, 6, 25, 26, 25), (30, 170, 60))]),
            "a solid green triangle on a gradient background",
        ),
        ("grey ring on grey", _draw((128, 128, 128), [("ring", (6, 6, 26, 26), (60, 60, 60))]), "a dark grey ring on a grey background"),
        ("colour field", _draw(blobs, []), "a colourful abstract pattern"),
    ]
    out = [{"name": n, "image": img, "prompt": prompt, "in_grammar": False} for n, img, prompt in items]
    for item in dataset(2, seed=100):
        out.append({"name": f"render {item['seed']}", "image": item["image"], "prompt": item["prompt"], "in_grammar": True})
    return out


def run_beyond(args) -> dict:
    """Reconstruction and inversion cost on `beyond_images()`, one cached cell per image under editing_beyond/."""
    from PIL import Image

    from studio.loading import load_pipeline

    torch.manual_seed(0)
    pipe = load_pipeline(args.model, device="cpu")
    counter = UnetCounter(pipe.unet)
    items = beyond_images()
    for n, item in enumerate(items):
        path = BEYOND_CELLS / f"{slug(item['name'])}.json"
        if path.is_file():
            continue
        image = Image.fromarray(item["image"])
        record = {"name": item["name"], "prompt": item["prompt"], "in_grammar": item["in_grammar"], "reconstruction": {}, "speed": {}}
        ceiling = to_pil(decode_latents(pipe, encode_image(pipe, image)))[0]
        record["reconstruction"]["vae"] = {"psnr": psnr(ceiling, image), "ssim": ssim(ceiling, image)}
        inversions = invert_every_way(pipe, image, item["prompt"], record, counter, steps=args.steps, first_official=n % 2 == 0)
        w1 = InversionResult(**{**inversions["ddim"].__dict__, "guidance_scale": 1.0})
        rec, _ = reconstruct(pipe, w1)
        record["reconstruction"]["ddim (w = 1 round trip)"] = {"psnr": psnr(rec, image), "ssim": ssim(rec, image)}
        BEYOND_CELLS.mkdir(parents=True, exist_ok=True)
        image.save(BEYOND_CELLS / f"{slug(item['name'])}.png")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=float))
        tmp.replace(path)
        print(
            f"beyond {n + 1}/{len(items)} {item['name']}: " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in record["speed"].items()),
            flush=True,
        )
    counter.close()
    return summarise_beyond()


def summarise_beyond() -> dict:
    """Per group (outside the grammar / the in-grammar controls): mean PSNR / SSIM, PSNR minus the official loop's
    (paired, per image), mean cost, and the speed-up (total seconds of the official loop over the method's)."""
    records = [json.loads(p.read_text()) for p in sorted(BEYOND_CELLS.glob("*.json"))]
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
    out = {}
    for group, rows in (
        ("outside the grammar", [r for r in records if not r["in_grammar"]]),
        ("renders", [r for r in records if r["in_grammar"]]),
    ):
        if not rows:
            continue
        official = "null-text (official loop)"
        g = {"images": [r["name"] for r in rows], "prompts": {r["name"]: r["prompt"] for r in rows}, "reconstruction": {}, "speed": {}}
        for name in rows[0]["reconstruction"]:
            v = {m: mean([r["reconstruction"][name][m] for r in rows]) for m in ("psnr", "ssim")}
            d = [r["reconstruction"][name]["psnr"] - r["reconstruction"][official]["psnr"] for r in rows]
            v.update(minus_official_mean=mean(d), minus_official_min=float(np.min(d)), minus_official_max=float(np.max(d)))
            v["per_image"] = {r["name"]: r["reconstruction"][name]["psnr"] for r in rows}
            g["reconstruction"][name] = v
        total = {ref: sum(r["speed"][ref]["seconds"] for r in rows) for ref in ("official", "official-frozen")}
        for name in rows[0]["speed"]:
            v = {m: mean([r["speed"][name][m] for r in rows]) for m in ("seconds", "unet_forward", "unet_backward")}
            for m in ("adam_steps", "steps_without_update"):
                if m in rows[0]["speed"][name]:
                    v[m] = mean([r["speed"][name][m] for r in rows])
            own = sum(r["speed"][name]["seconds"] for r in rows)
            v["speedup_vs_official"] = total["official"] / own
            v["speedup_vs_official_frozen"] = total["official-frozen"] / own
            g["speed"][name] = v
        out[group] = g
    return out


def beyond_markdown(beyond: dict, steps: int = 50) -> list:
    lines = [
        "## Beyond the renders: images the toy model never saw",
        "",
        "Drawn with PIL (32x32, antialiased): shapes, colours, a texture, a layout and backgrounds outside the grammar, each inverted "
        "with the prompt a user would write (its words outside the grammar too); two renders measured in the same run as controls. "
        f'{steps} DDIM steps, guidance 7.5. `null-text` is ours (null_init="source", early stop before the update); the official loop '
        'follows the notebook ("" start). Reproduce: `OMP_NUM_THREADS=1 python benchmarks/editing_table.py --beyond` (one cached cell '
        "per image in benchmarks/results/editing_beyond/, with the image as PNG). Seconds are noisy (a shared machine); UNet counts exact.",
        "",
    ]
    for group, g in beyond.items():
        lines += [f"### {group} ({len(g['images'])} images)", ""]
        lines += ["Images and prompts: " + "; ".join(f'{n}: "{p}"' for n, p in g["prompts"].items()) + ".", ""]
        lines += ["| method | PSNR (dB) | SSIM | minus official loop, mean [min, max] |", "|---|---|---|---|"]
        for name, v in g["reconstruction"].items():
            d = f"{v['minus_official_mean']:+.2f} [{v['minus_official_min']:+.2f}, {v['minus_official_max']:+.2f}]"
            lines.append(f"| {name} | {v['psnr']:.2f} | {v['ssim']:.4f} | {d} |")
        lines += [
            "",
            "| method | seconds | UNet forward rows | UNet backward | Adam steps | timesteps with no update (of 50) | speed-up vs official loop | vs frozen |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, v in g["speed"].items():
            label = {"official": "null-text, official loop", "official-frozen": "null-text, official loop, frozen UNet"}.get(name, name)
            adam = f"{v['adam_steps']:.0f}" if "adam_steps" in v else ""
            idle = f"{v['steps_without_update']:.1f}" if "steps_without_update" in v else ""
            lines.append(
                f"| {label} | {v['seconds']:.2f} | {v['unet_forward']:.0f} | {v['unet_backward']:.0f} | {adam} | {idle} | "
                f"{v['speedup_vs_official']:.1f}x | {v['speedup_vs_official_frozen']:.1f}x |"
            )
        per = g["reconstruction"]
        names = ["null-text", "null-text (official loop)", "ddim", "direct", "vae"]
        lines += [
            "",
            "PSNR per image (dB): "
            + "; ".join(f"{img}: " + ", ".join(f"{m} {per[m]['per_image'][img]:.1f}" for m in names if m in per) for img in g["images"])
            + ".",
            "",
        ]
    return lines


# ---------------------------------------------------------------- erase, then edit: the edit path on an erased model

ERASE_CELLS = ROOT / "benchmarks" / "results" / "editing_erase_cells"
ERASED_MODELS = ROOT / "runs" / "editing_erased"  # erased models (minutes to make; not committed)
ERASE_CONCEPT = "triangle"
ERASE_METHODS = {"null-text, target_null empty": ("null-text", {"target_null": "empty"}), "ddim": ("ddim", {})}


def erase_edit_images(n: int, seed: int = 300) -> list:
    """n renders of a triangle in any colour but red (so that "red" is a change), style and background drawn from the seed."""
    items, k = [], 0
    while len(items) < n:
        rng = np.random.default_rng(seed + k)
        labels = sample_labels(rng, {"shape": ERASE_CONCEPT})
        k += 1
        if labels["colour"] == "red":
            continue
        r = render(labels, rng=rng)
        items.append({"seed": seed + k - 1, "labels": r.labels, "image": r.image, "mask": r.mask, "prompt": TEMPLATE.format(**r.labels)})
    return items


def erased_model(method: str, log=print) -> str:
    """'toy' for the original; else the toy model with the triangle erased by `method` at its toy preset, made once."""
    if method == "original":
        return "toy"
    from erasers import erase, toy_target
    from studio.loading import load_pipeline

    folder = ERASED_MODELS / f"{method}--{ERASE_CONCEPT}"
    if not (folder / "erasure.json").is_file():
        log(f"erasing {ERASE_CONCEPT} with {method} (toy preset) -> {folder}")
        pipe = load_pipeline("toy", device="cpu")
        t0 = time.time()
        result = erase(
            pipe, toy_target(method, ERASE_CONCEPT), method, preset="toy", checkpoint_dir=folder.with_suffix(".checkpoint"), progress=False
        )
        result.stats["wall_seconds"] = round(time.time() - t0, 1)
        result.save(folder, pipe, base_model="toy")
    return str(folder)


def erase_edit_cell(pipe, judge, item: dict, steps: int, edit_cfg: EditConfig) -> dict:
    """One image on one model: inverted with null-text and DDIM (by that model), then edited two ways in one call:
    the shape to a square, the colour to red (the triangle kept); every output judged, the source row too."""
    from PIL import Image

    labels = item["labels"]
    targets = {"square": TEMPLATE.format(**{**labels, "shape": "square"}), "red triangle": TEMPLATE.format(**{**labels, "colour": "red"})}
    record = {"seed": item["seed"], "labels": labels, "prompt": item["prompt"], "targets": targets, "methods": {}}
    for name, (method, overrides) in ERASE_METHODS.items():
        t0 = time.perf_counter()
        inv = invert(pipe, Image.fromarray(item["image"]), item["prompt"], method, method_config(method, steps))
        out = edit(pipe, None, item["prompt"], list(targets.values()), method, inversion=inv, config=edit_cfg, **overrides)
        verdicts = judge.predict([out.reconstruction, *out.edits])
        record["methods"][name] = {
            "seconds": time.perf_counter() - t0,
            "source_row_psnr": psnr(out.reconstruction, item["image"]),
            "source_verdict": verdicts[0],
            "edits": {
                k: {"verdict": v, "iou_source": iou(object_mask(np.asarray(img)), item["mask"])}
                for k, v, img in zip(targets, verdicts[1:], out.edits)
            },
        }
    return record


def run_erase_edit(args) -> dict:
    from studio.loading import load_pipeline
    from studio.toyworld.judge import ToyJudge

    judge = ToyJudge.load(args.judge)
    edit_cfg = EditConfig(cross_replace_steps=args.cross, self_replace_steps=args.self_steps)
    items = erase_edit_images(args.erase_images)
    for model in ["original", *args.erasers]:
        todo = [it for it in items if not (ERASE_CELLS / model / f"{it['seed']}.json").is_file()]
        generated = ERASE_CELLS / f"generated-{model}.json"
        if not todo and generated.is_file():
            continue
        torch.manual_seed(0)
        pipe = load_pipeline(erased_model(model), device="cpu")
        if not generated.is_file():  # the model's own images of the red-triangle prompts, from noise (no inversion)
            from studio.sampling import sample_pairs

            prompts = [TEMPLATE.format(**{**it["labels"], "colour": "red"}) for it in items]
            images = sample_pairs(pipe, prompts, [it["seed"] for it in items], num_inference_steps=args.steps)
            verdicts = judge.predict(images)
            ERASE_CELLS.mkdir(parents=True, exist_ok=True)
            generated.write_text(json.dumps({"prompts": prompts, "seeds": [it["seed"] for it in items], "verdicts": verdicts}, indent=1))
        for item in todo:
            record = erase_edit_cell(pipe, judge, item, args.steps, edit_cfg)
            path = ERASE_CELLS / model / f"{item['seed']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1, default=float))
            tmp.replace(path)
            print(
                f"erase-edit {model} seed {item['seed']}: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in record["methods"].items()),
                flush=True,
            )
        del pipe
    return summarise_erase_edit()


def _erase_edit_rates(rows: list) -> dict:
    """rows: [(one inversion's record of one image, the image's labels)] -> the judged outcomes as rates."""
    from studio.stats import Rate

    def count(pred):
        return Rate(sum(bool(pred(row, lab)) for row, lab in rows), len(rows)).as_dict()

    def kept(verdict, lab, skip):
        return all(verdict[a] == lab[a] for a in ATTRS if a != skip)

    def shapes(key):
        judged = [row["edits"][key]["verdict"]["shape"] for row, _ in rows]
        return {s: judged.count(s) for s in sorted(set(judged))}

    def sq(row):
        return row["edits"]["square"]["verdict"]

    def rt(row):
        return row["edits"]["red triangle"]["verdict"]

    return {
        "source_row_psnr": float(np.mean([row["source_row_psnr"] for row, _ in rows])),
        "source_shows_triangle": count(lambda row, lab: row["source_verdict"]["shape"] == ERASE_CONCEPT),
        "source_all_four": count(lambda row, lab: kept(row["source_verdict"], lab, None)),
        "square_changed_and_kept": count(lambda row, lab: sq(row)["shape"] == "square" and kept(sq(row), lab, "shape")),
        "square_still_triangle": count(lambda row, lab: sq(row)["shape"] == ERASE_CONCEPT),
        "square_shape": shapes("square"),
        "red_changed_and_kept": count(lambda row, lab: rt(row)["colour"] == "red" and kept(rt(row), lab, "colour")),
        "red_is_red": count(lambda row, lab: rt(row)["colour"] == "red"),
        "red_shows_triangle": count(lambda row, lab: rt(row)["shape"] == ERASE_CONCEPT),
        "red_shape": shapes("red triangle"),
    }


def summarise_erase_edit() -> dict:
    """Per model and inversion: rates (count, Wilson interval) of what the judge sees, over the images every model has."""
    from studio.stats import Rate

    models = [p.name for p in sorted(ERASE_CELLS.iterdir()) if p.is_dir() and any(p.glob("*.json"))]
    models.sort(key=lambda m: (m != "original", m))
    seeds = {m: {p.stem for p in (ERASE_CELLS / m).glob("*.json")} for m in models}
    most = max((len(v) for v in seeds.values()), default=0)
    complete = [m for m in models if len(seeds[m]) == most]  # a model still running is shown on the images it has
    common = set.intersection(*[seeds[m] for m in complete]) if complete else set()
    out = {}
    for model in models:
        records = [json.loads((ERASE_CELLS / model / f"{s}.json").read_text()) for s in sorted(common & seeds[model], key=int)]
        erasure = ERASED_MODELS / f"{model}--{ERASE_CONCEPT}" / "erasure.json"
        out[model] = {
            "images": len(records),
            "erasure_seconds": json.loads(erasure.read_text()).get("stats", {}).get("wall_seconds") if erasure.is_file() else None,
        }
        generated = ERASE_CELLS / f"generated-{model}.json"
        if generated.is_file():
            g = json.loads(generated.read_text())
            keep = [v for s, v in zip(g["seeds"], g["verdicts"]) if str(s) in common]
            out[model]["generated_triangle"] = Rate(sum(v["shape"] == ERASE_CONCEPT for v in keep), len(keep)).as_dict()
            out[model]["generated_red_triangle"] = Rate(
                sum(v["shape"] == ERASE_CONCEPT and v["colour"] == "red" for v in keep), len(keep)
            ).as_dict()
        for name in ERASE_METHODS:
            rows = [(r["methods"][name], r["labels"]) for r in records]
            out[model][name] = _erase_edit_rates(rows)
    return out


def erase_edit_markdown(table: dict) -> list:
    from studio.stats import format_rate

    rate = lambda r: format_rate(r["k"], r["n"])  # noqa: E731
    lines = [
        "## Erase, then edit",
        "",
        f"The {ERASE_CONCEPT} erased from the toy model by each eraser at its toy preset (`erasers.erase(pipe, toy_target(method, "
        f'"{ERASE_CONCEPT}"), method, preset="toy")`), beside the original. Rendered triangles (any colour but red, seeds from 300) '
        "are inverted *by the erased model* with their full prompt, then edited in one call two ways by one word: the shape to "
        '"square" ("a ... square on a ... background") and the colour to "red" ("a ... red triangle ..."); P2P replace, cross '
        "0.8, self 0.5. Judged by the toy judge; 95% Wilson intervals. Source row: the edit's reconstruction of the input. "
        'Rows "none": the model\'s own images of the red-triangle prompts from noise, same seeds (what the erasure does without '
        "an inversion). "
        "Reproduce: `OMP_NUM_THREADS=1 python benchmarks/editing_table.py --erase-edit --erasers esd-x uce rece` (cells in "
        "benchmarks/results/editing_erase_cells/; erased models under runs/editing_erased/, not committed).",
        "",
        "| model | inversion | images | source row PSNR | source row shows a triangle | square edit: square, rest kept | square edit: still a triangle | "
        "red edit: red, rest kept (a red triangle) | red edit: shows a triangle | shapes judged (square edit / red edit) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, t in table.items():
        if "generated_triangle" in t:
            red, tri = rate(t["generated_red_triangle"]), rate(t["generated_triangle"])
            lines.append(f"| {model} | none (from noise) | {t['images']} |  |  |  |  | red triangles {red} | {tri} |  |")
        for name in ERASE_METHODS:
            v = t[name]
            shapes = " / ".join(", ".join(f"{s} {k}" for s, k in v[key].items()) for key in ("square_shape", "red_shape"))
            lines.append(
                f"| {model} | {name} | {t['images']} | {v['source_row_psnr']:.2f} | {rate(v['source_shows_triangle'])} | "
                f"{rate(v['square_changed_and_kept'])} | {rate(v['square_still_triangle'])} | {rate(v['red_changed_and_kept'])} | "
                f"{rate(v['red_shows_triangle'])} | {shapes} |"
            )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--judge", default=str(ROOT / "assets" / "toy-judge"))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cross", type=float, default=EditConfig.cross_replace_steps)
    p.add_argument("--self", dest="self_steps", type=float, default=EditConfig.self_replace_steps)
    p.add_argument(
        "--blend", action="store_true", help="local blend on the shape words for object edits (its mask is most of the image on the toy)"
    )
    p.add_argument("--skip-official", action="store_true", help="leave out the official null-text loop (quick runs)")
    p.add_argument("--save-images", default=None, help="folder for the edits and reconstructions")
    p.add_argument("--quick", action="store_true", help="2 images: a check of the machinery, not a result")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "editing_table.json"))
    p.add_argument("--summarise", action="store_true", help="only recompute the summary and tables of the --out file")
    p.add_argument("--edits", action="store_true", help="only the PIE-Bench-style edit table (cached cells; the rest of --out is kept)")
    p.add_argument("--seed", type=int, default=100, help="first render seed of the edit table's images")
    p.add_argument("--variants", nargs="+", default=list(EDIT_VARIANTS), choices=list(EDIT_VARIANTS), help="edit table rows")
    p.add_argument(
        "--beyond", action="store_true", help="only the reconstruction / speed table on images outside the grammar (cached cells)"
    )
    p.add_argument("--erase-edit", action="store_true", help="only the erase-then-edit rows (cached cells; erased models under runs/)")
    p.add_argument(
        "--erasers", nargs="+", default=["esd-x", "uce", "rece"], help="erase-then-edit: the erasers (toy presets) of the triangle"
    )
    p.add_argument("--erase-images", type=int, default=12, help="erase-then-edit: rendered triangle images")
    args = p.parse_args(argv)
    if args.quick:
        args.images = 2
    if args.beyond or args.erase_edit:
        out = Path(args.out)
        results = json.loads(out.read_text()) if out.is_file() else {}
        if args.beyond:
            results["beyond"] = run_beyond(args)
        if args.erase_edit:
            results["erase_edit"] = run_erase_edit(args)
        out.write_text(json.dumps(results, indent=1, default=float))
        md = markdown(results)
        out.with_suffix(".md").write_text(md + "\n")
        print(md)
        return 0
    if args.edits or (args.summarise and CELLS.is_dir()):
        out = Path(args.out)
        results = json.loads(out.read_text()) if out.is_file() else {}
        results["pie"] = run_edits(args) if args.edits else summarise_edits(args.variants)
        if args.summarise and BEYOND_CELLS.is_dir():
            results["beyond"] = summarise_beyond()
        if args.summarise and ERASE_CELLS.is_dir():
            results["erase_edit"] = summarise_erase_edit()
        results["pie_settings"] = {"seed": args.seed, "cross": args.cross, "self_steps": args.self_steps, "steps": args.steps}
        out.write_text(json.dumps(results, indent=1, default=float))
        md = markdown(results)
        out.with_suffix(".md").write_text(md + "\n")
        print(md)
        return 0
    if args.summarise:
        results = json.loads(Path(args.out).read_text())
        results["summary"] = summarise(results["images"])
    else:
        results = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    md = markdown(results)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
