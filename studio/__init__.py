"""Erasure Studio core: loading pipelines, the sampling loop, the toy world, judges, metrics, jobs, CLI.

    from studio import load_pipeline, sample
    pipe = load_pipeline()                       # the shipped toy model
    out = sample(pipe, "a red triangle", seed=0)
    out.images[0].save("triangle.png")
"""

from .loading import ModelLoadError, load_pipeline
from .sampling import Cancelled, check_prompt, encode_prompts, sample


__all__ = ["ModelLoadError", "load_pipeline", "Cancelled", "check_prompt", "encode_prompts", "sample"]
