"""Revival probes: is an erased concept gone, or only asleep?

    import probes
    result = probes.run_probe("relearning", pipe, "triangle", probes.get_config("relearning", {"images": 16}),
                              callback=print, cancel=event)
    result.summary, result.measurements, result.stats      # JSON-able; stats: unet_evals, seconds
    result.grid().save("relearning.png")                   # what was drawn, labelled with the judge's verdicts

Probes (one file each, each with its config dataclass; `PROBES` is the one list of names):

    relearning   fine-tune the component the eraser changed on k renders; judged concept rate at s steps
    inversion    DDIM / null-text inversion and reconstruction of renders: PSNR, judged rate, z_T statistics
    completion   renders noised to t = 0.25, 0.5, 0.75 of the schedule, finished by the model
    inpainting   half of a render masked and filled by latent blending, with the context-only control
    distance     the model beside the oracle and the original on the same prompts and seeds: the judged
                 distribution of what is drawn for the concept, KID on judge features (concept and
                 retain prompts); pass `references={"oracle": pipe, "original": pipe}`

Every probe takes `(pipe, concept, config, judge=, callback=, cancel=, progress=)`, reports progress
in the studio's one event shape (`studio.progress`), can be cancelled (`studio.sampling.Cancelled`)
and refuses to start when its plan exceeds `config.max_unet_evals`. Every rate is a
`studio.stats.Rate` (k of n with a Wilson interval). Compare a model with the oracle (the toy model
retrained without the concept, `studio.toyworld.oracle.oracle_path`) and with the original.

Dependencies: probes -> erasers, inversion -> studio; only the app and the CLI import probes.
"""

import importlib

# name -> (module, config class)
PROBES = {
    "relearning": ("relearning", "RelearningConfig"),
    "inversion": ("inversion", "InversionProbeConfig"),
    "completion": ("completion", "CompletionConfig"),
    "inpainting": ("inpainting", "InpaintingConfig"),
    "distance": ("distance", "DistanceConfig"),
}

# smaller budgets, for a run that fits in minutes on a CPU (the table's --budget small, the CLI's)
SMALL = {
    "relearning": {"checkpoints": (0, 10, 25), "prompts": 2, "seeds": 2, "num_inference_steps": 10, "checkpoint_every": 5},
    "inversion": {"images": 2, "methods": ("ddim",), "num_inference_steps": 10},
    "completion": {"images": 2, "noise_levels": (0.5,), "num_inference_steps": 10},
    "inpainting": {"images": 2, "num_inference_steps": 10},
    "distance": {"prompts": 4, "retain_prompts": 2, "seeds": 2, "num_inference_steps": 10},
}
# a middle budget for the revival table on a CPU: 24 judged images per checkpoint at 25 DDIM steps
MEDIUM = {
    "relearning": {"prompts": 6, "seeds": 4, "num_inference_steps": 25},
    "inversion": {"images": 6, "num_inference_steps": 25},
    "completion": {"num_inference_steps": 25},
    "inpainting": {"num_inference_steps": 25},
    "distance": {"prompts": 10, "retain_prompts": 3, "num_inference_steps": 25},
}
BUDGETS = {"default": {}, "medium": MEDIUM, "small": SMALL}


def _module(name: str):
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; available: {', '.join(PROBES)}")
    return importlib.import_module(f"{__name__}.{PROBES[name][0]}")


def config_class(name: str) -> type:
    return getattr(_module(name), PROBES[name][1])


def get_config(name: str, overrides: dict | None = None, budget: str = "default"):
    """The config of probe `name`: its defaults, the budget's settings on top (`BUDGETS`: "medium",
    "small"), then `overrides`.
    Unknown fields and values of the wrong type are a ValueError (the erasers' check)."""
    from erasers import check_settings

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    cls = config_class(name)
    values = dict(BUDGETS[budget].get(name, {}))
    if overrides:
        check_settings(cls, overrides, f"probe {name}")
        values.update(overrides)
    return cls(**values)


_JUDGE = None


def default_judge():
    """The toy judge, loaded once."""
    global _JUDGE
    if _JUDGE is None:
        from studio.judges import get_judge

        _JUDGE = get_judge("toy")
    return _JUDGE


def run_probe(name: str, pipe, concept: str, config=None, *, judge=None, callback=None, cancel=None, progress=False, **kwargs):
    """Run probe `name` on `pipe` for toy concept `concept`; `config` is its config object, a dict of
    overrides or None (defaults). Relearning also takes `oracle=` (the oracle's result, for the ratio)
    and `checkpoint_dir=` (resumable); distance takes `references=` (label -> pipeline or
    `distance.Drawn`) and `label=` (the model's own, "erased" by default). Returns a `ProbeResult`."""
    module = _module(name)
    if config is None or isinstance(config, dict):
        config = get_config(name, config)
    elif not isinstance(config, config_class(name)):
        raise ValueError(f"probe {name!r} takes a {PROBES[name][1]}, got a {type(config).__name__}")
    from .common import erasable_concept

    concept = erasable_concept(concept).name  # a synonym names the same concept; unknown names fail here
    return module.run(pipe, concept, config, judge=judge, callback=callback, cancel=cancel, progress=progress, **kwargs)


def format_result(result) -> str:
    """One readable paragraph of a probe's result."""
    return _module(result.probe).format_result(result)


def __getattr__(name):
    if name in ("ProbeResult", "concept_renders"):
        return getattr(importlib.import_module(f"{__name__}.common"), name)
    if name in ("component_for", "method_component", "COMPONENTS", "METHOD_COMPONENTS"):
        return getattr(importlib.import_module(f"{__name__}.relearning"), name)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")


__all__ = ["BUDGETS", "MEDIUM", "PROBES", "SMALL", "config_class", "default_judge", "format_result", "get_config", "run_probe"]
