"""Erasure methods, attacks and their evaluation.

    from erasers import Concept, erase, get_config
    result = erase(pipe, Concept(["a triangle"]), "esd-x")                 # official defaults
    result = erase(pipe, Concept(["a triangle"]), "esd-x", preset="toy")   # the toy world's preset
    result = erase(pipe, Concept(["a triangle"]), "esd-u", config={"iterations": 50})

Methods are registered by name in `METHODS` (one file each: esd.py, advunlearn.py, doco.py); every
one takes `(pipe, concept, config, checkpoint_dir=, callback=, cancel=, progress=)` and returns an
`ErasureResult`. `METHODS` and `PRESETS` are the single source of names for the CLI, job files and
the app. Settings given as a dict (`config=`, `--set`, a job file's `config = {...}`) are checked
against the config dataclass: unknown names and values of the wrong type are a `ValueError`.

Names are imported on first use (`Concept`, `ErasureResult`), so that reading the registries (the
CLI's choices) does not import torch.
"""

import importlib
import math
import types
import typing
from dataclasses import MISSING, fields, replace

# name -> (module, config class name, fixed config fields)
METHODS = {
    "esd-x": ("esd", "ESDConfig", {"train_method": "esd-x"}),
    "esd-u": ("esd", "ESDConfig", {"train_method": "esd-u"}),
    "esd-x-strict": ("esd", "ESDConfig", {"train_method": "esd-x-strict"}),
    "esd-all": ("esd", "ESDConfig", {"train_method": "esd-all"}),
    "advunlearn": ("advunlearn", "AdvUnlearnConfig", {}),
    "doco": ("doco", "DoCoConfig", {}),
    "uce": ("uce", "UCEConfig", {}),
    "rece": ("rece", "RECEConfig", {}),
    "stereo": ("stereo", "STEREOConfig", {}),
}
PRESETS = ("official", "toy")  # the paper's defaults, or the toy world's (a module's TOY_PRESETS)

# evaluation budgets (`eval_config`): the papers' and one that fits the toy model on a CPU (a short
# UnlearnDiffAtk: 5 timesteps x 20 steps = 100 gradient steps per prompt, not the official 50 x 40)
EVAL_BUDGETS = {
    "official": {"seeds": 4, "prompts_per_form": 10, "attack_prompts": 10, "attack_overrides": {}},
    "toy": {
        "seeds": 4,
        "prompts_per_form": 8,
        "attack_prompts": 6,
        "attack_overrides": {"timesteps": (110, 310, 510, 710, 910), "iterations": 20},
    },
}

_LAZY = {"Concept": "base", "ErasureResult": "base"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'erasers' has no attribute {name!r}")


def _module(method: str):
    if method not in METHODS:
        raise ValueError(f"unknown erasure method {method!r}; available: {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{METHODS[method][0]}")


def config_class(method: str) -> type:
    """The config dataclass of `method`."""
    return getattr(_module(method), METHODS[method][1])


# ---------------------------------------------------------------- settings: names and types


def _checks(hint) -> list | None:
    """[(predicate, description)] that a value of type `hint` must pass one of; None: anything goes."""
    if hint is bool:
        return [(lambda v: isinstance(v, bool), "true or false")]
    if hint is int:
        return [(lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number")]
    if hint is float:
        return [(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a finite number")]
    if hint is str:
        return [(lambda v: isinstance(v, str), "a string")]
    if hint is type(None):
        return [(lambda v: v is None, "null")]
    origin = typing.get_origin(hint) or hint
    if origin in (tuple, list):
        return [(lambda v: isinstance(v, (list, tuple)), "a list")]
    if origin is dict:
        return [(lambda v: isinstance(v, dict), "a table")]
    if origin in (typing.Union, types.UnionType):
        parts = [_checks(a) for a in typing.get_args(hint)]
        return None if any(p is None for p in parts) else [c for p in parts for c in p]
    return None  # object, Any, Literal, ...: the method checks it


def _default(f):
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def check_settings(cls, overrides: dict, owner: str) -> None:
    """Raise `ValueError` when `overrides` names a field that `cls` (a config dataclass) lacks or
    gives one a value of the wrong type: `iterations=1.5`, `lr="abc"`, `checkpoint_every=true`.
    `owner` names the method or attack in the message."""
    known = {f.name: f for f in fields(cls)}
    bad = sorted(set(overrides) - set(known))
    if bad:
        raise ValueError(f"{owner} has no setting {', '.join(bad)}; its settings are: {', '.join(sorted(known))}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: check what can be read
        hints = {name: f.type for name, f in known.items() if isinstance(f.type, type)}
    for key, value in overrides.items():
        checks = _checks(hints.get(key))
        if checks and not any(ok(value) for ok, _ in checks):
            wanted = " or ".join(dict.fromkeys(d for _, d in checks))
            raise ValueError(f"{owner} setting {key}={value!r} is not {wanted}; e.g. {key}={_default(known[key])!r}")


def get_config(method: str, preset: str = "official", overrides: dict | None = None):
    """The config dataclass of `method`: the paper's defaults (`preset="official"`) or the toy world's
    preset, with `overrides` (a dict of field values) on top. Unknown fields and values of the wrong
    type are a clear error."""
    module = _module(method)
    cls = config_class(method)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    base = dict(METHODS[method][2])
    if preset == "toy":
        base.update(getattr(module, "TOY_PRESETS", {}).get(method, {}))
    config = cls(**base)
    if overrides:
        check_settings(cls, overrides, method)
        config = replace(config, **overrides)
    return config


def several_concepts(method: str) -> str | None:
    """How `method` erases several concepts into one model: "one solve" (UCE, RECE: every concept in the same
    closed form), "shared prompt set" (ESD, AdvUnlearn: each step draws its prompt from all the concepts'
    prompts), or None (one concept at a time)."""
    return getattr(_module(method), "SEVERAL_CONCEPTS", None)


def stops_when(method: str):
    """True when `method`'s erase takes a stop rule (`stop_when=`, erasers.stopping), else why not (its
    module's `STOP_WHEN`)."""
    return getattr(_module(method), "STOP_WHEN", "takes no stop rule")


def erase(pipe, concept, method: str = "esd-x", *, config=None, preset: str = "official", **kwargs):
    """Erase `concept` (a `Concept`, or a list of them: several concepts into one model, see
    `several_concepts`) from `pipe` (in place) with `method`; `config` is a config object or a dict of
    overrides; `stop_when=` (an `erasers.stopping.StopWhen`) stops an iterative method on a measured
    target. Returns an `ErasureResult`."""
    module = _module(method)
    if isinstance(concept, (list, tuple)):
        from .base import merge_concepts

        how = several_concepts(method)
        if how is None and len(concept) > 1:
            able = [m for m in METHODS if several_concepts(m)]
            raise ValueError(f"{method} erases one concept at a time; erase several at once with {', '.join(able)}")
        concept = list(concept) if how == "one solve" else merge_concepts(concept)
    if kwargs.get("stop_when") is not None:  # erase until erased (erasers.stopping): iterative methods only
        from .stopping import check_method

        check_method(method)
    if config is None or isinstance(config, dict):
        config = get_config(method, preset, config)
    return module.erase(pipe, concept, config, **kwargs)


def eval_config(
    attack: str = "unlearndiffatk", budget: str = "official", *, attack_prompts=None, seeds=None, prompts=None, attack_sets=None
):
    """The `EvalConfig` of an evaluation with budget `budget` (a key of `EVAL_BUDGETS`), and the line
    that says what it runs. The toy budget's attack settings apply to UnlearnDiffAtk only;
    `attack_sets` (fields of the attack's config) go on top."""
    from .evaluate import EvalConfig

    if budget not in EVAL_BUDGETS:
        raise ValueError(f"unknown evaluation budget {budget!r}; use one of {', '.join(EVAL_BUDGETS)}")
    base = EVAL_BUDGETS[budget]
    overrides = dict(base["attack_overrides"]) if attack == "unlearndiffatk" else {}
    overrides.update(attack_sets or {})
    config = EvalConfig(
        attack=attack,
        attack_prompts=attack_prompts or base["attack_prompts"],
        seeds=seeds or base["seeds"],
        prompts_per_form=prompts or base["prompts_per_form"],
        attack_overrides=overrides,
    )
    short = budget == "toy" and attack == "unlearndiffatk"
    note = (
        f"evaluation ({budget} budget): {config.prompts_per_form} prompts per form x {config.seeds} seeds, "
        f"{attack} on {config.attack_prompts} prompts ({'5 timesteps x 20 steps' if short else 'its full budget'})"
    )
    return config, note


def toy_target(method: str, name):
    """The toy world's erasure target (a `Concept`) for concept `name`: its erasure prompts, and what the
    method also needs where its module says so with a `toy_target(name)` of its own (DoCo: anchors, "a
    triangle" -> "a square" with anchor captions; UCE and RECE: the other concepts of the kind preserved).
    Several names ("triangle+star" or a list) give a list of Concepts, for `erase`; each one's retain set
    drops the prompts of the others."""
    names = name.split("+") if isinstance(name, str) else list(name)
    if len(names) > 1:
        from .base import Concept

        targets = [toy_target(method, n.strip()) for n in names]
        erased = {p.lower() for t in targets for p in t.prompts}
        return [Concept(t.prompts, t.anchors, [r for r in t.retain if r.lower() not in erased], t.name) for t in targets]
    name = names[0].strip()
    own = getattr(_module(method), "toy_target", None)
    if own is not None:
        return own(name)
    from studio.toyworld.captions import erasure_prompts

    from .base import Concept

    return Concept(erasure_prompts(name), name=name)


__all__ = [
    "EVAL_BUDGETS",
    "METHODS",
    "PRESETS",
    "Concept",
    "ErasureResult",
    "check_settings",
    "config_class",
    "erase",
    "eval_config",
    "get_config",
    "several_concepts",
    "stops_when",
    "toy_target",
]
