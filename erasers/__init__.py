"""Erasure methods, attacks and their evaluation.

    from erasers import Concept, erase, get_config
    result = erase(pipe, Concept(["a triangle"]), "esd-x")                 # official defaults
    result = erase(pipe, Concept(["a triangle"]), "esd-x", preset="toy")   # the toy world's preset
    result = erase(pipe, Concept(["a triangle"]), "esd-u", config={"iterations": 50})

Methods are registered by name in `METHODS` (one file each: esd.py, advunlearn.py, doco.py); every
one takes `(pipe, concept, config, checkpoint_dir=, callback=, cancel=, progress=)` and returns an
`ErasureResult`.
"""

import importlib
from dataclasses import fields, replace

from .base import Concept, ErasureResult


# name -> (module, config class name, fixed config fields)
METHODS = {
    "esd-x": ("esd", "ESDConfig", {"train_method": "esd-x"}),
    "esd-u": ("esd", "ESDConfig", {"train_method": "esd-u"}),
    "esd-x-strict": ("esd", "ESDConfig", {"train_method": "esd-x-strict"}),
    "esd-all": ("esd", "ESDConfig", {"train_method": "esd-all"}),
    "advunlearn": ("advunlearn", "AdvUnlearnConfig", {}),
    "doco": ("doco", "DoCoConfig", {}),
}
PRESETS = ("official", "toy")


def _module(method: str):
    if method not in METHODS:
        raise ValueError(f"unknown erasure method {method!r}; available: {', '.join(METHODS)}")
    name = METHODS[method][0]
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise ValueError(f"erasure method {method!r} is not available in this version") from e
        raise


def get_config(method: str, preset: str = "official", overrides: dict | None = None):
    """The config dataclass of `method`: the paper's defaults (`preset="official"`) or the toy world's
    preset, with `overrides` (a dict of field values) on top. Unknown fields are a clear error."""
    module = _module(method)
    cls = getattr(module, METHODS[method][1])
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    base = dict(METHODS[method][2])
    if preset == "toy":
        base.update(getattr(module, "TOY_PRESETS", {}).get(method, {}))
    config = cls(**base)
    if overrides:
        known = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"{method} has no setting {', '.join(bad)}; its settings are: {', '.join(sorted(known))}")
        config = replace(config, **overrides)
    return config


def erase(pipe, concept: Concept, method: str = "esd-x", *, config=None, preset: str = "official", **kwargs) -> ErasureResult:
    """Erase `concept` from `pipe` (in place) with `method`; `config` is a config object or a dict of overrides."""
    module = _module(method)
    if config is None or isinstance(config, dict):
        config = get_config(method, preset, config)
    return module.erase(pipe, concept, config, **kwargs)


def toy_target(method: str, name: str) -> Concept:
    """The toy world's erasure target for concept `name`: its erasure prompts (name, synonyms, colour
    variants); DoCo also needs anchors ("a triangle" -> "a square", with anchor captions)."""
    if _module(method).__name__.endswith(".doco"):
        from .doco import toy_concept

        return toy_concept(name)
    from studio.toyworld.captions import erasure_prompts

    return Concept(erasure_prompts(name), name=name)


__all__ = ["Concept", "ErasureResult", "METHODS", "PRESETS", "erase", "get_config", "toy_target"]
