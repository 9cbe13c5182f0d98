"""The result of inverting one image, and its file: repeated edits of an image skip the inversion.

    inv = null_text.invert(pipe, "photo.png", "a cat on a sofa")
    inv.save("photo.inversion.safetensors")           # ~1 MB on the toy model, ~12 MB for SD v1 null-text
    inv = InversionResult.load("photo.inversion.safetensors")
    edit(pipe, None, "a cat on a sofa", "a dog on a sofa", inversion=inv)

The file is one safetensors file (no pickle): the tensors below, and JSON metadata (method,
prompt, the method's config, the scheduler config, the image size and fit, a model fingerprint,
statistics). Null-text embeddings are stored once per distinct value: consecutive steps whose
embedding did not change (early stop before any update) share a row through `null_index`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from studio.checkpoint import atomic_save_tensors

from . import METHODS


FORMAT = "erasure-studio-inversion"
VERSION = 1


@dataclass
class InversionResult:
    method: str  # one of METHODS
    prompt: str  # the source prompt the image was inverted with
    num_inference_steps: int  # N; the edit must use the same number of steps
    guidance_scale: float  # the guidance the edit runs at (null-text embeddings are optimised for it)
    latent_T: torch.Tensor  # (1, 4, h, w) fp32: z*_T, where sampling starts
    image_latent: torch.Tensor  # (1, 4, h, w) fp32: z*_0, the VAE encoding of the image
    scheduler_config: dict  # the DDIM config the trajectory was made with
    null_embeddings: torch.Tensor | None = None  # (N, 77, D) fp32, null-text only: the unconditional embedding of each forward step
    pivot: torch.Tensor | None = None  # (N+1, 1, 4, h, w) fp32, direct only: z*_0 .. z*_N
    config: dict = field(default_factory=dict)  # the method's config, as a dict
    resolution: int = 0  # the image side the model works at
    fit: str = "crop"
    fingerprint: list = field(default_factory=list)  # see common.fingerprint
    stats: dict = field(default_factory=dict)  # seconds, unet_forward, unet_backward, per-step losses ...

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown inversion method {self.method!r}; use one of {', '.join(METHODS)}")

    def save(self, path) -> Path:
        """Write the result to `path` (safetensors, atomically). Returns the path."""
        path = Path(path)
        tensors = {"latent_T": self.latent_T.float(), "image_latent": self.image_latent.float()}
        if self.null_embeddings is not None:
            rows, index = _dedupe(self.null_embeddings.float())
            tensors["null_embeddings"] = rows
            tensors["null_index"] = index
        if self.pivot is not None:
            tensors["pivot"] = self.pivot.float()
        meta = {
            "format": FORMAT,
            "version": str(VERSION),
            "method": self.method,
            "prompt": self.prompt,
            "num_inference_steps": str(self.num_inference_steps),
            "guidance_scale": repr(float(self.guidance_scale)),
            "scheduler_config": json.dumps(self.scheduler_config),
            "config": json.dumps(self.config),
            "resolution": str(self.resolution),
            "fit": self.fit,
            "fingerprint": json.dumps(self.fingerprint),
            "stats": json.dumps(self.stats),
        }
        atomic_save_tensors(path, tensors, meta)
        return path

    @classmethod
    def load(cls, path, device="cpu") -> "InversionResult":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no inversion file at {path}")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for non-safetensors files
            raise ValueError(f"{path} is not a safetensors file ({e}); give a file written by InversionResult.save") from e
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{path} is a safetensors file but not an inversion (format {meta.get('format')!r}); give a file written by InversionResult.save"
            )
        if int(meta.get("version", 0)) > VERSION:
            raise ValueError(f"{path} was written by a newer version (format version {meta['version']}); update Erasure Studio")
        null = None
        if "null_embeddings" in tensors:
            null = tensors["null_embeddings"][tensors["null_index"].long()]
        return cls(
            method=meta["method"],
            prompt=meta["prompt"],
            num_inference_steps=int(meta["num_inference_steps"]),
            guidance_scale=float(meta["guidance_scale"]),
            latent_T=tensors["latent_T"],
            image_latent=tensors["image_latent"],
            scheduler_config=json.loads(meta["scheduler_config"]),
            null_embeddings=null,
            pivot=tensors.get("pivot"),
            config=json.loads(meta.get("config", "{}")),
            resolution=int(meta.get("resolution", 0)),
            fit=meta.get("fit", "crop"),
            fingerprint=json.loads(meta.get("fingerprint", "[]")),
            stats=json.loads(meta.get("stats", "{}")),
        )


def _dedupe(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, ...) -> (distinct consecutive rows (K, ...), index (N,) int64) with rows[index] == x."""
    keep = [0]
    index = [0]
    for i in range(1, len(x)):
        if not torch.equal(x[i], x[keep[-1]]):
            keep.append(i)
        index.append(len(keep) - 1)
    return x[keep].contiguous(), torch.tensor(index, dtype=torch.int64)
