"""Train the toy world from scratch: VAE, then text encoder + UNet (latent diffusion), then the judge.

    studio toyworld train [--work runs/toyworld] [--out assets] [--stages vae,diffusion,judge]

Every stage checkpoints atomically into `--work` every few hundred steps and resumes from there when
run again (killed or not). Batches are a pure function of (seed, stage, step), so a resumed run sees
the same data as an uninterrupted one. When all stages are done the pipeline is written to
`<out>/toy-model` (diffusers folder, safetensors) and the judge to `<out>/toy-judge`.

Recipe:
  * data: a pool of rendered images (`render.py`) with captions drawn afresh each step
    (`captions.py`: base words, synonyms, aliases); 3% empty backgrounds.
  * VAE: MSE + L1 reconstruction, KL weight 1e-6 (as SD); latents scaled by 1/std of the pool's latents.
  * diffusion: epsilon prediction with SD's DDPM schedule, caption dropout 10% for classifier-free
    guidance, AdamW, linear warm-up then cosine decay, EMA of the weights (the EMA is shipped); then
    a short fine-tune with offset noise so that the model can draw dark backgrounds.
  * judge: cross-entropy on the four heads over fresh renders, half of them passed through the VAE
    (so that it reads decoded images as well as clean ones), plus empty and noise images ("none").
  * check judge (`judge_augment="generation"`, with its own `judge_seed`; written to `toy-judge-check`):
    the same recipe on images that look like generations: morphs between two shapes (their soft
    boundary radii blended ray by ray, labelled with the dominant shape, or left out of the shape loss when neither
    dominates), blended colours and part-filled styles (the same rule), holes in the object, blur and
    low-frequency noise, on top of the VAE round trips. `studio toyworld train --stages judge
    --judge-seed 1 --judge-augment generation` trains it against the shipped VAE (no pool needed).
"""

import copy
import functools
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..paths import ASSETS, TOKENIZER, TOY_JUDGE, TOY_JUDGE_CHECK
from ..text_encoder import save_text_encoder
from .captions import caption
from .grammar import NONE, concept
from .models import HEADS, JudgeNet, build_scheduler, build_text_encoder, build_train_scheduler, build_unet, build_vae
from .render import render


JUDGE_AUGMENTS = ("renders", "generation")  # the judge stage's data: renders (toy-judge) or generation-like (toy-judge-check)


@dataclass
class TrainConfig:
    seed: int = 0
    pool_size: int = 40000  # rendered images in the training pool
    empty_rate: float = 0.03  # share of empty backgrounds in the pool
    # VAE
    vae_steps: int = 1500
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # diffusion
    diffusion_steps: int = 6000
    diffusion_batch: int = 64
    diffusion_lr: float = 6e-4
    warmup_steps: int = 300
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    # then a fine-tune with offset noise (Guttenberg, 2023): SD's schedule leaves the latents' mean
    # almost untouched at t = T, so a model trained on plain noise cannot choose a global brightness
    # and ignores "dark background"; noise + offset * N(0, 1) per image and channel fixes that
    finetune_steps: int = 2000
    finetune_lr: float = 1e-4
    offset_noise: float = 0.1
    # judge
    judge_steps: int = 1500
    judge_batch: int = 128
    judge_lr: float = 2e-3
    judge_seed: int | None = None  # the judge's own seed (None: `seed`); the check judge uses another one
    judge_augment: str = "renders"  # renders | generation (morphs, blends, partial fills, blur: the check judge)
    checkpoint_every: int = 250
    # an oracle: the text encoder and UNet retrained from scratch on the same pool with every image of
    # this concept removed (so no caption names it either); the VAE and judge are the shipped ones
    without: str = ""

    def __post_init__(self):
        if self.judge_augment not in JUDGE_AUGMENTS:
            raise ValueError(f"unknown judge augment {self.judge_augment!r}; use one of {', '.join(JUDGE_AUGMENTS)}")

    @property
    def judge_rng_seed(self) -> int:
        """The judge stage's seed: `judge_seed`, else the run's `seed`."""
        return self.seed if self.judge_seed is None else self.judge_seed


# The shipped model's recipe: the defaults above less the offset-noise fine-tune, which was not run for
# it (see the toy-world report); oracles are trained with the same recipe so that they differ only in data.
SHIPPED_RECIPE = {"finetune_steps": 0}


def _cosine(step, total, warmup, floor=0.1):
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, 32, 32) in [-1, 1]


def _rng(seed, stage, step):
    return np.random.default_rng([seed, stage, step])


def _gen(seed, stage, step):
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + step)


class Pool:
    """A fixed pool of renders (images, labels) built from the seed; cached as .npz in the work folder."""

    def __init__(self, cfg: TrainConfig, work: Path):
        path = work / "pool.npz"
        if path.is_file():
            data = np.load(path, allow_pickle=False)
            self.images = data["images"]
            self.labels = json.loads(str(data["labels"]))
            return
        rng = np.random.default_rng([cfg.seed, 99])
        images, labels = [], []
        for _ in tqdm(range(cfg.pool_size), desc="rendering pool", leave=False):
            given = {"shape": NONE} if rng.random() < cfg.empty_rate else None
            r = render(given, rng=rng)
            images.append(r.image)
            labels.append(r.labels)
        self.images = np.stack(images)
        self.labels = labels
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / "pool.tmp.npz"
        np.savez(tmp, images=self.images, labels=np.array(json.dumps(labels)))
        tmp.replace(path)

    def exclude(self, name: str) -> int:
        """Drop every image that shows concept `name` (its captions go with it). Returns how many."""
        c = concept(name)
        if c.attribute == "background":
            raise ValueError(f"{name!r} is a background; an oracle leaves out a shape, colour or style")
        keep = [i for i, labels in enumerate(self.labels) if labels[c.attribute] != c.name]
        dropped = len(self.labels) - len(keep)
        self.images = self.images[keep]
        self.labels = [self.labels[i] for i in keep]
        return dropped


def _resume(path: Path, modules, optimizers):
    if path.is_file():
        meta, _ = load_checkpoint(path, modules, optimizers)
        return meta["step"]
    return 0


# ---------------------------------------------------------------- VAE


def train_vae(cfg: TrainConfig, work: Path, pool: Pool):
    torch.manual_seed(cfg.seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt = work / "vae.ckpt.safetensors"
    step = _resume(ckpt, {"vae": vae}, {"opt": opt})
    bar = tqdm(range(step, cfg.vae_steps), initial=step, total=cfg.vae_steps, desc="vae")
    for step in bar:
        rng = _rng(cfg.seed, 1, step)
        x = _to_tensor(pool.images[rng.integers(len(pool.images), size=cfg.vae_batch)])
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * _cosine(step, cfg.vae_steps, 100)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=_gen(cfg.seed, 1, step))
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
            save_checkpoint(ckpt, {"vae": vae}, {"opt": opt}, meta={"step": step + 1})
    vae.eval()
    # scaling factor: 1 / std of the latents of the pool (SD's 0.18215 was found the same way)
    with torch.no_grad():
        idx = np.random.default_rng([cfg.seed, 7]).integers(len(pool.images), size=2048)
        z = torch.cat([vae.encode(_to_tensor(pool.images[idx[i : i + 256]])).latent_dist.mean for i in range(0, 2048, 256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae


# ---------------------------------------------------------------- diffusion


def _encode_pool(vae, pool: Pool, work: Path):
    path = work / "latents.npz"
    if path.is_file():
        d = np.load(path)
        return torch.from_numpy(d["mean"]), torch.from_numpy(d["std"])
    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(pool.images), 512), desc="encoding pool", leave=False):
            post = vae.encode(_to_tensor(pool.images[i : i + 512])).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    tmp = work / "latents.tmp.npz"
    np.savez(tmp, mean=mean.numpy(), std=std.numpy())
    tmp.replace(path)
    return mean, std


def train_diffusion(cfg: TrainConfig, work: Path, pool: Pool, vae, tokenizer):
    torch.manual_seed(cfg.seed + 1)
    text_encoder, unet = build_text_encoder(), build_unet()
    ema_te, ema_unet = copy.deepcopy(text_encoder), copy.deepcopy(unet)
    for p in list(ema_te.parameters()) + list(ema_unet.parameters()):
        p.requires_grad_(False)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.diffusion_lr, weight_decay=1e-2)
    scheduler = build_train_scheduler()
    modules = {"text_encoder": text_encoder, "unet": unet, "ema_text_encoder": ema_te, "ema_unet": ema_unet}
    ckpt = work / "diffusion.ckpt.safetensors"
    step = _resume(ckpt, modules, {"opt": opt})
    lat_mean, lat_std = _encode_pool(vae, pool, work)
    scale = vae.config.scaling_factor
    alphas = scheduler.alphas_cumprod

    ema_pairs = list(zip(list(ema_te.parameters()) + list(ema_unet.parameters()), params))
    total = cfg.diffusion_steps + cfg.finetune_steps
    bar = tqdm(range(step, total), initial=step, total=total, desc="diffusion")
    for step in bar:
        rng = _rng(cfg.seed, 2, step)
        g = _gen(cfg.seed, 2, step)
        idx = rng.integers(len(pool.images), size=cfg.diffusion_batch)
        captions = ["" if rng.random() < cfg.caption_dropout else caption(pool.labels[i], rng) for i in idx]
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * scale
        noise = torch.randn(z0.shape, generator=g)
        finetune = step >= cfg.diffusion_steps
        if finetune and cfg.offset_noise:
            noise = noise + cfg.offset_noise * torch.randn(z0.shape[:2] + (1, 1), generator=g)
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = cfg.finetune_lr if finetune else cfg.diffusion_lr * _cosine(step, cfg.diffusion_steps, cfg.warmup_steps)
        context = text_encoder(ids)[0]  # (B, 77, D)
        pred = unet(zt, t, context).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in ema_pairs:
                e.lerp_(p, 1 - decay)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 in (cfg.diffusion_steps, total):
            save_checkpoint(ckpt, modules, {"opt": opt}, meta={"step": step + 1})
    return ema_te.eval(), ema_unet.eval()


# ---------------------------------------------------------------- judge


IGNORE = -100  # a label left out of its head's loss (F.cross_entropy's ignore_index)
DOMINANT = 0.7  # a blend counts as its dominant part from this share on; below it the label is left out


def judge_batch(rng: np.random.Generator, n: int, vae=None, vae_rate: float = 0.5, augment: str = "renders"):
    """Fresh renders (+ empties and noise images labelled none), half passed through the VAE.
    `augment="generation"`: half of the objects are drawn as generations look (`_generation_like`), and
    every image may be blurred; a label that no part dominates is `IGNORE` (left out of the loss)."""
    if augment not in JUDGE_AUGMENTS:
        raise ValueError(f"unknown judge augment {augment!r}; use one of {', '.join(JUDGE_AUGMENTS)}")
    generation = augment == "generation"
    images, targets = [], {a: [] for a in HEADS}
    for _ in range(n):
        u = rng.random()
        if u < 0.08:
            r = render({"shape": NONE}, rng=rng)
            img, labels = r.image.astype(np.float32), r.labels
        elif u < 0.12:  # a noise field: no object
            base = rng.uniform(0, 255, 3)
            img = np.clip(base + rng.normal(0, rng.uniform(5, 40), (32, 32, 3)), 0, 255).astype(np.float32)
            labels = {"shape": NONE, "colour": NONE, "style": NONE, "background": "light" if img.mean() > 127 else "dark"}
        elif generation and u < 0.56:
            img, labels = _generation_like(rng)
        else:
            r = render(rng=rng)
            img, labels = r.image.astype(np.float32), r.labels
        images.append(img)
        for a in HEADS:
            targets[a].append(IGNORE if labels[a] is None else HEADS[a].index(labels[a]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1
    if generation:  # low-frequency colour noise (generations drift in tone), then blur on some
        low = torch.from_numpy(rng.normal(0, 1, (n, 3, 4, 4)).astype(np.float32) * rng.uniform(0, 0.08, (n, 1, 1, 1)).astype(np.float32))
        x = (x + F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)).clamp(-1, 1)
        x = _blur_some(x, rng, share=0.4)
    if vae is not None:
        through = torch.from_numpy(rng.random(n) < vae_rate)
        if through.any():
            with torch.no_grad():
                x[through] = vae.decode(vae.encode(x[through]).latent_dist.mean).sample.clamp(-1, 1)
    x = x + torch.from_numpy(rng.normal(0, rng.uniform(0, 0.06 if generation else 0.03), x.shape).astype(np.float32))
    return x, {a: torch.tensor(v) for a, v in targets.items()}


def _blur_some(x: torch.Tensor, rng: np.random.Generator, share: float) -> torch.Tensor:
    """Gaussian blur (sigma 0.3 to 1.2 px) on a random `share` of the batch."""
    x = x.clone()
    r = torch.arange(-3, 4, dtype=torch.float32)
    for i in np.flatnonzero(rng.random(len(x)) < share):
        k = torch.exp(-(r**2) / (2 * rng.uniform(0.3, 1.2) ** 2))
        k = k / k.sum()
        xi = F.pad(x[i : i + 1], (3, 3, 3, 3), mode="replicate")
        xi = F.conv2d(xi, k.view(1, 1, 1, 7).expand(3, 1, 1, 7), groups=3)
        x[i] = F.conv2d(xi, k.view(1, 1, 7, 1).expand(3, 1, 7, 1), groups=3)[0]
    return x


@functools.cache
def _radii(shape: str, bins: int = 720) -> np.ndarray:
    """The shape's boundary radius along each of `bins` rays from its centre (every toy shape is
    star-shaped about it), in units of the half-size: a morph blends two shapes' radii ray by ray."""
    from .render import silhouette

    theta = np.linspace(-np.pi, np.pi, bins, endpoint=False)
    r = np.linspace(0, 1.6, 641)
    outside = ~silhouette(shape, np.cos(theta)[:, None] * r, np.sin(theta)[:, None] * r)
    outside[:, -1] = True
    return r[outside.argmax(1)]


def _morph(a: str, b: str, t: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Points (u, v) inside the morph (1 - t) * a + t * b: exactly `a` at t = 0 and `b` at t = 1."""
    ra, rb = _radii(a), _radii(b)
    k = ((np.arctan2(v, u) + np.pi) / (2 * np.pi) * len(ra)).astype(int) % len(ra)
    return np.hypot(u, v) <= (1 - t) * ra[k] + t * rb[k]


def _generation_like(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One object drawn the way erased and attacked models draw them: (image float (32, 32, 3), labels).

    The silhouette is a morph of two shapes (their boundary radii blended ray by ray from the centre,
    weight t of the second; labelled with the dominant one when
    max(t, 1 - t) >= DOMINANT, else None), the colour a blend of two colours (same rule), the fill one
    style over part of the object and another elsewhere (labelled with the style covering DOMINANT of
    it, else None), and some objects have holes of background. Every part of it is drawn from `rng`."""
    from .grammar import ATTRIBUTES, BACKGROUND_RGB, RGB, SHAPES
    from .render import DOT_PERIOD, DOT_RADIUS, SIZE, STRIPE_PERIOD, SUPER, TINT, silhouette

    labels = {a: v[rng.integers(len(v))] for a, v in ATTRIBUTES.items()}
    background = np.array(BACKGROUND_RGB[labels["background"]], dtype=np.float32) + rng.uniform(-10, 10, 3)
    half = rng.uniform(6.0, 12.5)
    cx, cy = rng.uniform(half + 0.5, SIZE - half - 0.5, size=2)
    s = (np.arange(SIZE * SUPER) + 0.5) / SUPER
    py, px = np.meshgrid(s, s, indexing="ij")
    u, v = (px - cx) / half, (py - cy) / half

    def dominant(a, b, t):  # the label of a blend of a (weight 1 - t) and b (weight t)
        if a == b:
            return a
        return a if 1 - t >= DOMINANT else b if t >= DOMINANT else None

    cover = silhouette(labels["shape"], u, v)
    if rng.random() < 0.5:  # a morph between two shapes
        other = SHAPES[rng.integers(len(SHAPES))]
        t = rng.uniform(0, 1)
        cover = _morph(labels["shape"], other, t, u, v)
        labels["shape"] = dominant(labels["shape"], other, t)
    colour = np.array(RGB[labels["colour"]], dtype=np.float32)
    if rng.random() < 0.35:  # a blended colour
        other = ATTRIBUTES["colour"][rng.integers(5)]
        t = rng.uniform(0, 1)
        colour = (1 - t) * colour + t * np.array(RGB[other], dtype=np.float32)
        labels["colour"] = dominant(labels["colour"], other, t)
    colour = np.clip(colour + rng.uniform(-18, 18, 3), 0, 255)
    tint = colour * (1 - TINT) + 255 * TINT * rng.uniform(0.8, 1.1)
    phase = rng.uniform(0, 1, size=2)

    def fill_of(style):
        if style == "solid":
            return np.ones_like(cover)
        if style == "striped":
            return ((py / STRIPE_PERIOD * rng.uniform(0.85, 1.15) + phase[0]) % 1.0) < rng.uniform(0.35, 0.65)
        gx, gy = (px / DOT_PERIOD + phase[0]) % 1.0 - 0.5, (py / DOT_PERIOD + phase[1]) % 1.0 - 0.5
        return (gx**2 + gy**2) * DOT_PERIOD**2 <= (DOT_RADIUS * rng.uniform(0.8, 1.3)) ** 2

    full = fill_of(labels["style"])
    if rng.random() < 0.35:  # part of the object filled with another style (split along a random line)
        other = ATTRIBUTES["style"][rng.integers(3)]
        angle = rng.uniform(0, 2 * np.pi)
        side = (u * np.cos(angle) + v * np.sin(angle)) > rng.uniform(-1, 1)
        t = float(side[cover].mean()) if cover.any() else 0.0
        full = np.where(side, fill_of(other), full)
        labels["style"] = dominant(labels["style"], other, t)
    if rng.random() < 0.2:  # holes of background (a partly drawn object); at most a quarter of it
        for _ in range(rng.integers(1, 4)):
            hx, hy, hr = rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), rng.uniform(0.15, 0.35)
            hole = (u - hx) ** 2 + (v - hy) ** 2 <= hr**2
            if (cover & ~hole).sum() >= 0.75 * cover.sum():
                cover = cover & ~hole
    hi = np.where(cover[..., None], np.where(full[..., None], colour, tint), background)
    image = hi.reshape(SIZE, SUPER, SIZE, SUPER, 3).mean(axis=(1, 3))
    return np.clip(image, 0, 255).astype(np.float32), labels


def judge_folder(cfg: TrainConfig) -> str:
    """Where the judge stage writes under `out`: toy-judge, or toy-judge-check for the generation-augmented one."""
    return TOY_JUDGE_CHECK.name if cfg.judge_augment == "generation" else TOY_JUDGE.name


def train_judge(cfg: TrainConfig, work: Path, vae):
    seed = cfg.judge_rng_seed
    torch.manual_seed(seed + 2)
    net = JudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.judge_lr, weight_decay=1e-4)
    ckpt = work / ("judge.ckpt.safetensors" if judge_folder(cfg) == TOY_JUDGE.name else f"{judge_folder(cfg)}-{seed}.ckpt.safetensors")
    step = _resume(ckpt, {"judge": net}, {"opt": opt})
    bar = tqdm(range(step, cfg.judge_steps), initial=step, total=cfg.judge_steps, desc="judge")
    for step in bar:
        x, y = judge_batch(_rng(seed, 3, step), cfg.judge_batch, vae, augment=cfg.judge_augment)
        for g in opt.param_groups:
            g["lr"] = cfg.judge_lr * _cosine(step, cfg.judge_steps, 100, floor=0.02)
        logits = net(x)
        loss = sum(F.cross_entropy(logits[a], y[a]) for a in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.judge_steps:
            save_checkpoint(ckpt, {"judge": net}, {"opt": opt}, meta={"step": step + 1})
    return net.eval()


# ---------------------------------------------------------------- all stages


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER))


def _write_pipeline(target: Path, vae, text_encoder, unet, tokenizer) -> None:
    """A complete diffusers folder, written beside `target` and moved into place."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(tmp / "text_encoder")
    save_text_encoder(text_encoder, tmp / "text_encoder")  # SD key layout: loads in transformers 4 and 5
    shutil.copy(TOKENIZER / "vocab.json", tmp / "tokenizer" / "vocab.json")
    shutil.copy(TOKENIZER / "merges.txt", tmp / "tokenizer" / "merges.txt")
    _replace_dir(tmp, target)


def _write_oracle(target: Path, text_encoder, unet, cfg: TrainConfig, dropped: int, kept: int) -> None:
    """Only what differs from the shipped model: text encoder, UNet and `oracle.json` (read by the loader)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_text_encoder(text_encoder, tmp / "text_encoder")
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    info = {
        "kind": "oracle",
        "base_model": "toy",
        "components": ["text_encoder", "unet"],
        "without": concept(cfg.without).name,
        "images_dropped": dropped,
        "images_kept": kept,
        "diffusion_steps": cfg.diffusion_steps + cfg.finetune_steps,
        "seed": cfg.seed,
    }
    (tmp / "oracle.json").write_text(json.dumps(info, indent=2))
    _replace_dir(tmp, target)


def _replace_dir(tmp: Path, target: Path) -> None:
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def shipped_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(ASSETS / "toy-model" / "vae"), use_safetensors=True).eval()


def train(cfg: TrainConfig, work: Path, out: Path, stages=("vae", "diffusion", "judge")) -> dict:
    """Run (or resume) the stages; write the pipeline and judge under `out`. Returns timings.

    With `cfg.without` set this trains an oracle instead: the shipped VAE, the diffusion stage on the
    pool less every image of that concept, and `<out>/toy-oracle-<concept>` holding only the text
    encoder and UNet (the loader completes it from the shipped model).
    """
    if cfg.without:
        concept(cfg.without)  # an unknown concept fails here, before any work
        stages = ("diffusion",)
    if tuple(stages) == ("judge",) and not (work / "vae.ckpt.safetensors").is_file():
        return _train_judge_alone(cfg, work, out)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    timings = json.loads((work / "timings.json").read_text()) if (work / "timings.json").is_file() else {}
    tokenizer = load_tokenizer()
    t0 = time.time()
    pool = Pool(cfg, work)
    dropped = pool.exclude(cfg.without) if cfg.without else 0
    timings["pool_s"] = timings.get("pool_s") or time.time() - t0

    def timed(name, fn):
        start = time.time()
        result = fn()
        timings[f"{name}_s"] = timings.get(f"{name}_s", 0) + time.time() - start
        (work / "timings.json").write_text(json.dumps(timings, indent=2))
        return result

    vae = shipped_vae() if cfg.without else timed("vae", lambda: train_vae(cfg, work, pool))
    if "diffusion" in stages:
        text_encoder, unet = timed("diffusion", lambda: train_diffusion(cfg, work, pool, vae, tokenizer))
        if cfg.without:
            _write_oracle(out / f"toy-oracle-{concept(cfg.without).name}", text_encoder, unet, cfg, dropped, len(pool.labels))
        else:
            _write_pipeline(out / "toy-model", vae, text_encoder, unet, tokenizer)
    if "judge" in stages:
        net = timed("judge", lambda: train_judge(cfg, work, vae))
        _write_judge(out / judge_folder(cfg), net, cfg)
    return timings


def _write_judge(jdir: Path, net, cfg: TrainConfig) -> None:
    from safetensors.torch import save_file

    jdir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(jdir / "judge.safetensors"))
    info = {"width": 32, "heads": {a: list(v) for a, v in HEADS.items()}}
    if judge_folder(cfg) != TOY_JUDGE.name:
        info.update(seed=cfg.judge_rng_seed, augment=cfg.judge_augment, steps=cfg.judge_steps, batch=cfg.judge_batch)
    (jdir / "config.json").write_text(json.dumps(info, indent=2))


def _train_judge_alone(cfg: TrainConfig, work: Path, out: Path) -> dict:
    """The judge stage on its own, against the shipped VAE (no pool: the judge renders its own batches)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    start = time.time()
    net = train_judge(cfg, work, shipped_vae())
    _write_judge(out / judge_folder(cfg), net, cfg)
    return {"judge_s": time.time() - start}
