"""Save a CLIP text encoder so that every transformers version reads it.

transformers 5 names the modules without the `text_model.` level and `save_pretrained` writes the
keys that way; transformers 4 (and every SD v1.x checkpoint) expects `text_model.embeddings...`, and
4.x silently leaves all weights random when it meets the new layout. `save_text_encoder` writes the
SD layout, which transformers 5 also loads, so a plug-in encoder works in both.
"""

import json
from pathlib import Path

import torch

from .checkpoint import atomic_save_tensors


def sd_layout_state_dict(text_encoder) -> dict:
    out = {}
    for key, value in text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith("text_model.") else f"text_model.{key}"] = value.detach().contiguous()
    return out


def save_text_encoder(text_encoder, folder, dtype: torch.dtype | None = None) -> Path:
    """`config.json` + `model.safetensors` (SD layout keys) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = text_encoder.config.to_dict()
    config["architectures"] = ["CLIPTextModel"]
    config.pop("_name_or_path", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    tensors = sd_layout_state_dict(text_encoder)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    atomic_save_tensors(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    return folder
