"""Inversion probe: can the model still reconstruct images of the concept it was made to forget?

"Memories of Forgotten Concepts" (Rusanovsky et al., CVPR 2025): invert concept images through the
*erased* model and look at what comes back. Here k renders of the concept are inverted with each
method of `methods` (the inversion package's DDIM and null-text inversion) under a prompt that
names the concept (the render's full description, or the empty prompt), then reconstructed from the
inverted noise by the same model. Measured per method:

  * PSNR of the reconstruction against the render, beside the VAE round trip's (the ceiling: the
    VAE is shared, so no model can do better than encoding and decoding);
  * the judged concept rate of the reconstructions (with its Wilson interval), beside the renders' own;
  * how Gaussian the inverted noise z_T is: its mean squared value (1 for N(0, I)) and the mean
    negative log-likelihood per dimension under N(0, I) (1.419 for true noise); the paper's latent
    likelihood, in its simplest form.

An erased model that reconstructs the concept as well as the original still holds it; the oracle
(never trained on it) gives the reference of a model that does not. DDIM inversion reconstructs at
guidance 1 (the pivot, exact up to the inversion error); null-text at `null_text_guidance` (7.5), the
guidance its embeddings are optimised for.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np

from studio.images import psnr
from .common import Counter, ProbeResult, check_positive, concept_renders, decode, emit, encode, judged, rate_text


METHODS = ("ddim", "null-text")
GAUSSIAN_NLL = 0.5 * math.log(2 * math.pi) + 0.5  # E[-log N(z; 0, 1)] per dimension for z ~ N(0, 1)


@dataclass
class InversionProbeConfig:
    """Invert k renders of the concept and reconstruct them with the same model."""

    images: int = 8  # k renders of the concept
    methods: tuple = METHODS  # inversion methods (names of inversion.REGISTRY)
    prompt: str = "caption"  # "caption": the render's description (names the concept), or "empty"
    num_inference_steps: int = 50
    null_text_guidance: float = 7.5  # w of null-text inversion and of its reconstruction
    null_text_inner_steps: int = 10  # at most this many Adam steps per timestep
    seed: int = 0  # which renders
    max_unet_evals: int | None = None  # refuse to start when the plan needs more

    def __post_init__(self):
        from inversion import REGISTRY

        check_positive(self.images, "images", 8)
        check_positive(self.num_inference_steps, "num_inference_steps", 50)
        self.methods = tuple(self.methods)
        bad = [m for m in self.methods if m not in REGISTRY]
        if bad or not self.methods:
            raise ValueError(f"unknown inversion method(s) {bad or self.methods!r}; use some of {', '.join(REGISTRY)}")
        if self.prompt not in ("caption", "empty"):
            raise ValueError(f"prompt must be 'caption' or 'empty', got {self.prompt!r}")

    def planned_unet_evals(self) -> int:
        """An upper bound: DDIM 2N per image; null-text N + N (1 + inner steps) + 2N."""
        n = self.num_inference_steps
        per = {"ddim": 2 * n, "null-text": n + n * (1 + 2 * self.null_text_inner_steps) + 2 * n}
        return self.images * sum(per.get(m, 4 * n) for m in self.methods)


def _invert(pipe, image, prompt: str, method: str, cfg: InversionProbeConfig, cancel):
    from inversion import invert, reconstruct
    from inversion.ddim import DDIMInversionConfig
    from inversion.null_text import NullTextConfig

    if method == "ddim":
        config = DDIMInversionConfig(num_inference_steps=cfg.num_inference_steps, guidance_scale=1.0, inversion_guidance=1.0)
    elif method == "null-text":
        config = NullTextConfig(
            num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.null_text_guidance, num_inner_steps=cfg.null_text_inner_steps
        )
    else:
        config = None
    inv = invert(pipe, image, prompt, method, config, cancel=cancel)
    recon, _ = reconstruct(pipe, inv, cancel=cancel)
    evals = int(inv.stats.get("unet_forward", 0)) + inv.num_inference_steps * (2 if inv.guidance_scale > 1.0 else 1)
    return inv, recon, evals


def run(
    pipe, concept: str, config: InversionProbeConfig | None = None, *, judge=None, callback=None, cancel=None, progress=False, **_
) -> ProbeResult:
    """Invert and reconstruct k renders of `concept` with `pipe`; see the module docstring."""
    cfg = config or InversionProbeConfig()
    renders = concept_renders(concept, cfg.images, cfg.seed)
    if judge is None:
        from . import default_judge

        judge = default_judge()
    counter = Counter(cfg.max_unet_evals)
    counter.check_plan(cfg.planned_unet_evals(), "the inversion probe")
    originals = [r.image for r in renders]
    roundtrip = decode(pipe, encode(pipe, originals))
    measurements = {
        "renders": judged(judge, originals, concept).as_dict(),
        "vae_roundtrip_psnr": float(np.mean([psnr(a, b) for a, b in zip(originals, roundtrip)])),
        "methods": {},
    }
    total = len(cfg.methods) * len(renders)
    recons = {}
    done = 0
    for method in cfg.methods:
        psnrs, images, sq, nll = [], [], [], []
        for r in renders:
            prompt = r.prompt if cfg.prompt == "caption" else ""
            inv, recon, evals = _invert(pipe, r.image, prompt, method, cfg, cancel)
            counter.add(evals)
            z = inv.latent_T.float()
            sq.append(float(z.square().mean()))
            nll.append(float((0.5 * z.square() + 0.5 * math.log(2 * math.pi)).mean()))
            psnrs.append(psnr(recon, r.image))
            images.append(recon)
            done += 1
            emit(callback, "inversion-probe", done, total, method=method, psnr=psnrs[-1])
        rate = judged(judge, images, concept)
        measurements["methods"][method] = {
            "psnr": float(np.mean(psnrs)),
            "psnr_min": float(np.min(psnrs)),
            "psnr_each": [round(float(p), 2) for p in psnrs],
            "rate": rate.as_dict(),
            "latent_mean_square": float(np.mean(sq)),
            "latent_nll": float(np.mean(nll)),
        }
        recons[method] = images
    summary = {m: {"psnr": v["psnr"], "rate": v["rate"]["rate"]} for m, v in measurements["methods"].items()}
    summary["vae_roundtrip_psnr"] = measurements["vae_roundtrip_psnr"]
    result = ProbeResult("inversion", concept, asdict(cfg), measurements, summary, counter.stats())
    result.grid_cols = ["render", "VAE round trip", *[f"{m} reconstruction" for m in cfg.methods]]
    shows = {m: judge.shows(recons[m], concept) for m in cfg.methods}
    for i, r in enumerate(renders[:6]):
        cells = [(r.image, "input"), (roundtrip[i], f"{psnr(roundtrip[i], r.image):.1f} dB")]
        cells += [
            (recons[m][i], f"{measurements['methods'][m]['psnr_each'][i]:.1f} dB, {'yes' if shows[m][i] else 'no'}") for m in cfg.methods
        ]
        result.grid_rows.append((r.prompt, cells))
    return result


def format_result(result: ProbeResult) -> str:
    m = result.measurements
    parts = [
        f"{name}: PSNR {v['psnr']:.1f} dB, concept {rate_text(v['rate'])}, z_T mean square {v['latent_mean_square']:.2f}"
        for name, v in m["methods"].items()
    ]
    return f"inversion: {'; '.join(parts)} (VAE round trip {m['vae_roundtrip_psnr']:.1f} dB; renders judged {rate_text(m['renders'])})."


__all__ = ["InversionProbeConfig", "METHODS", "format_result", "run"]
