"""Erasure Studio core: loading pipelines, the sampling loop, the toy world, judges and metrics, jobs, CLI.

    from studio import load_pipeline, sample
    pipe = load_pipeline()                       # the shipped toy model
    out = sample(pipe, "a red triangle", seed=0)
    out.images[0].save("triangle.png")

Names are imported on first use, so that `studio --help` does not import torch.
"""

import importlib


_LAZY = {
    "ModelLoadError": "loading",
    "load_pipeline": "loading",
    "Cancelled": "sampling",
    "check_prompt": "sampling",
    "encode_prompts": "sampling",
    "sample": "sampling",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'studio' has no attribute {name!r}")
