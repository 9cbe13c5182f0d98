"""One progress event for every long job, the k-diffusion way.

    callback({"stage": "esd-x", "step": 12, "total": 200, "loss": 0.031})

Every long job in the studio (sampling, each eraser, each attack, the evaluation, each inversion, a
probe, anchor-image generation) takes `callback=` and calls it with one dict of this shape:

    stage   str         what is running: a method or attack name, "sampling", "evaluation", ...
    step    int         units of work done in this stage so far (1 after the first one)
    total   int | None  units in the stage when known
    ...                 extras a job wants to show: "loss", "prompt" (index in a batch), "concept",
                        "message", and heavier ones a UI may use ("image", "latents", "x", "denoised")

A job that runs another job passes its callback on through `relay(callback, concept="triangle")`,
which adds context without changing the shape. `describe(event)` is the one line a CLI bar or the
app shows for any event; nothing else parses events.
"""

import math
from numbers import Number


REQUIRED = ("stage", "step", "total")
HEAVY = ("image", "images", "latents", "x", "denoised", "prefix", "embedding")  # not shown as text


def event(stage: str, step: int, total: int | None = None, **extras) -> dict:
    """Build an event; `stage` names the job, `step` counts what is done, `total` what there is."""
    return {"stage": stage, "step": int(step), "total": None if total is None else int(total), **extras}


def is_event(info) -> bool:
    """True when `info` has the protocol's shape (used by the tests of every job)."""
    return (
        isinstance(info, dict)
        and isinstance(info.get("stage"), str)
        and isinstance(info.get("step"), int)
        and (info.get("total") is None or isinstance(info.get("total"), int))
    )


def relay(callback, **extras):
    """A callback that adds `extras` (e.g. `concept=`, `prompt=`) to every event and passes it on."""
    if callback is None:
        return None

    def inner(info):
        callback({**info, **{k: v for k, v in extras.items() if k not in info}})

    return inner


def fraction(info: dict) -> float | None:
    """Share of the stage done, in [0, 1], or None when the total is unknown."""
    total = info.get("total")
    if not total:
        return None
    return min(1.0, max(0.0, info.get("step", 0) / total))


def _value(v) -> str:
    if isinstance(v, bool) or not isinstance(v, Number):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.4g}"


def describe(info: dict) -> str:
    """One readable line for any event: 'esd-x 12/200 (6%) · loss 0.031 · concept triangle'."""
    stage, step, total = info.get("stage", "working"), info.get("step", 0), info.get("total")
    head = f"{stage} {step}/{total} ({100 * step / total:.0f}%)" if total else f"{stage} {step}"
    extras = [
        f"{k} {_value(v)}"
        for k, v in info.items()
        if k not in REQUIRED and k not in HEAVY and (isinstance(v, (str, Number)) and not isinstance(v, bool) or isinstance(v, bool))
    ]
    return " · ".join([head, *extras])
