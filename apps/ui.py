"""What every tab of the app shares on the page side: turning handlers into Gradio handlers (forms in,
named outputs out, errors as one-line messages), the one progress renderer, and small value checks.

    run = streamed(tab.run, outputs, EraseForm)     # Gradio calls run(request, state, **fields)
    button.click(run, [state], list(outputs.values()), inputs_kwargs=form_inputs(EraseForm, components))

A tab's handler is a plain generator `fn(form, state, session)` that yields dicts keyed by output
*names* ("status", "plot", ...); it never touches a Gradio component, so it works before, after and
without `build_app`. `streamed` maps the names to the components the tab made.
"""

import dataclasses
import functools
import html
import inspect
import math
import re
import traceback

import gradio as gr
import numpy as np
from PIL import Image

from studio.progress import HEAVY, describe, fraction


CSS = """
.job {font-size: 0.95em; padding: 4px 0;}
.job .bar {height: 8px; border-radius: 4px; background: var(--neutral-200); overflow: hidden; margin-bottom: 4px;}
.job .bar > div {height: 100%; background: var(--color-accent); transition: width 0.2s;}
.job.done .bar > div {background: #2e9d4f;}
.job.cancelled .bar > div, .job.error .bar > div {background: #c9872b;}
.job.idle {color: var(--body-text-color-subdued);}
#studio-header h1 {margin-bottom: 0;}
#studio-header p {margin-top: 2px; color: var(--body-text-color-subdued);}
.verdict-table table {font-size: 0.9em;}
.caption p {font-size: 0.9em; margin: 0; text-align: center;}
"""


def theme():
    return gr.themes.Soft(
        primary_hue="indigo",
        neutral_hue="slate",
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


# ----------------------------------------------------------------------------- errors


PICKLE_HINT = re.compile(
    r",? ?or pass allow_pickle=True \(CLI: --allow-pickle\) if you trust the source\.?|;? ?pass allow_pickle=True \(--allow-pickle\) if you trust it"
)


def readable(e: BaseException) -> str:
    """The message a person sees for an exception: ours as they are (they name the fix), others briefly."""
    from studio.images import ImageError
    from studio.loading import ModelLoadError

    if isinstance(e, (ModelLoadError, ImageError, ValueError, KeyError, FileNotFoundError, FloatingPointError)):
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if "allow_pickle" in text:  # the app never loads pickles, and `studio app` has no such option
            text = PICKLE_HINT.sub("", text).rstrip(" .") + ". The app never loads pickle files; convert the weights to safetensors."
        return text.splitlines()[0] if text else type(e).__name__
    if isinstance(e, ImportError):
        return f"a package is missing: {e}"
    if type(e).__name__ == "OutOfMemoryError":
        return "the device ran out of memory; use fewer images or steps, or a smaller model"
    return f"something went wrong ({type(e).__name__}: {e}); the details are in the server's log"


def to_gr_error(e: BaseException) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    known = type(e).__module__.split(".")[0] in ("studio", "erasers", "inversion", "apps") or isinstance(e, (ValueError, KeyError))
    if not known:
        traceback.print_exception(e)
    return gr.Error(html.escape(readable(e), quote=False), print_exception=False)


def friendly(fn):
    """Turn any exception of a plain handler into a readable `gr.Error`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise to_gr_error(e) from None

    return wrapper


# ----------------------------------------------------------------------------- handlers


def session_of(request) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def form_inputs(form_cls, components: dict) -> dict:
    """`inputs_kwargs` for a form: {field name: component} for every field of the dataclass."""
    return {f.name: components[f.name] for f in dataclasses.fields(form_cls)}


def _merge(old, new):
    """Two successive values of one output (plain values or `gr.update` dicts) as one."""
    if isinstance(new, dict) and new.get("__type__") == "update":
        if isinstance(old, dict) and old.get("__type__") == "update":
            return {**old, **new}
        return {"value": old, **new} if "value" not in new else new
    return new


def streamed(fn, outputs: dict, form_cls=None):
    """The Gradio generator handler of `fn(form, state, session)`, which yields {output name: value}.

    Gradio passes `state` positionally and the form's fields by name (`inputs_kwargs`); `fn` gets one
    `form_cls` instance (or None). Names become the components in `outputs`. When `fn` ends, all it
    showed is yielded once more as one dict, so an API client's final result holds every output. An
    exception becomes a one-line `gr.Error`, and the tab's "status" output shows it too, so the
    previous job's "Done" never stays beside a new job's error."""

    def run(request, state=None, **fields):
        shown = {}
        try:
            form = form_cls(**fields) if form_cls is not None else None
            for update in fn(form, state, session_of(request)):
                update = {outputs[name]: value for name, value in update.items()}
                for component, value in update.items():
                    value = dict(value) if isinstance(value, dict) else value  # Gradio pops "value" out of the dicts it is given
                    shown[component] = _merge(shown[component], value) if component in shown else value
                yield update
        except Exception as e:
            error = to_gr_error(e)
            if "status" in outputs:
                yield {outputs["status"]: status(0, 1, f"Error: {readable(e) if not isinstance(e, gr.Error) else e.message}", "error")}
            raise error from None
        if shown:
            yield shown

    P = inspect.Parameter
    params = [P("request", P.POSITIONAL_OR_KEYWORD, annotation=gr.Request), P("state", P.POSITIONAL_OR_KEYWORD, default=None)]
    if form_cls is not None:
        params += [P(f.name, P.KEYWORD_ONLY, default=f.default) for f in dataclasses.fields(form_cls)]
    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = {"request": gr.Request}
    run.__name__ = run.__qualname__ = getattr(fn, "__name__", "run")
    return run


# ----------------------------------------------------------------------------- progress and status


def status(done: float, total: float, text: str, kind: str = "running") -> str:
    """A progress bar with one line of text (HTML)."""
    pct = 0 if not total else max(0, min(100, 100 * done / total))
    if kind in ("done",):
        pct = 100
    return f'<div class="job {kind}"><div class="bar"><div style="width:{pct:.1f}%"></div></div>{html.escape(text, quote=False)}</div>'


def idle(text: str) -> str:
    return f'<div class="job idle">{html.escape(text, quote=False)}</div>'


def eta(done: float, total: float, seconds: float) -> str:
    if done <= 0 or total <= 0 or done >= total:
        return f"{seconds:.0f} s"
    left = seconds * (total - done) / done
    return f"{seconds:.0f} s, about {left:.0f} s left"


def as_event(info: dict, stage: str = "working") -> dict:
    """An event in the one shape of `studio.progress` ({"stage", "step", "total", ...}), also from a job
    that still reports the older shapes ({"i": 0-based index} or {"done": n}); only light extras kept."""
    ev = {k: v for k, v in info.items() if k not in HEAVY and isinstance(v, (int, float, str, bool))}
    ev.setdefault("stage", stage)
    if "step" not in ev:
        ev["step"] = int(ev.pop("i")) + 1 if "i" in ev else int(ev.pop("done", 0))
    ev.pop("i", None), ev.pop("done", None), ev.pop("t", None)
    ev.setdefault("total", None)
    return ev


def progress(title: str, info: dict | None, seconds: float, part: tuple = (0, 1), note: str = "") -> str:
    """The one renderer of a running job's progress, for every tab: a bar and the line
    '{title}: {describe(event)} · {time}'. `part` = (i, n) places the event's stage as the i-th of n
    equal parts of the job (prompts of an attack, models of a comparison)."""
    i, n = part
    if info is None:
        return status(i, n, f"{title} · {eta(i, n, seconds)}{note}")
    ev = as_event(info)
    share = (i + (fraction(ev) or 0.0)) / max(1, n)
    return status(share, 1, f"{title}: {describe(ev)} · {eta(share, 1, seconds)}{note}")


def loss_frame(steps: list, losses: list, series: str = "loss"):
    import pandas as pd

    if len(steps) > 600:  # thin long runs so the page stays light
        idx = np.linspace(0, len(steps) - 1, 600).round().astype(int)
        steps, losses = [steps[i] for i in idx], [losses[i] for i in idx]
    return pd.DataFrame({"step": steps, "loss": losses, "series": [series] * len(steps)})


# ----------------------------------------------------------------------------- values


def lines(text: str | None) -> list:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def parse_seeds(text) -> list:
    """ "0, 1, 2" or "0-3" -> [0, 1, 2] / [0, 1, 2, 3]."""
    seeds = []
    for part in re.split(r"[,\s]+", str(text or "").strip()):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        try:
            seeds += list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else [int(part)]
        except ValueError:
            raise ValueError(f"seeds must be whole numbers like '0, 1, 2' or '0-3', got {part!r}") from None
    if not seeds:
        raise ValueError("give at least one seed, e.g. '0, 1, 2, 3'")
    return seeds


def as_int(value, name: str, low: int = 0) -> int:
    """A whole number of at least `low`; 1.5 or 'abc' is an error, not rounded."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(v) or not v.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if v < low:
        raise ValueError(f"{name} must be at least {low}, got {int(v)}")
    return int(v)


def as_float(value, name: str) -> float:
    """A finite number (NaN and inf are errors: as a guidance scale they give black or unguided images)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def as_setting(kind, value, name: str):
    """`value` as a config field of type `kind` (int, float, bool, str, tuple, or `X | None`), or a
    one-line ValueError naming the field and the value: 'lr must be a number, got 'abc''."""
    args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
    if args and len(args) < len(getattr(kind, "__args__", ())):  # Optional[X]
        return None if value is None else as_setting(args[0], value, name)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        return as_int(value, name, low=-(2**63))
    if kind is float:
        return as_float(value, name)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be text, got {value!r}")
        return value
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list like [0.5, 0.999], got {value!r}")
        return tuple(value)
    return value


def show(image, size: int = 256):
    """Small images (the toy world's 32 px) are enlarged with nearest neighbour so pixels stay crisp."""
    if image is None:
        return None
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    if max(image.size) < 128:
        k = max(1, size // max(image.size))
        image = image.resize((image.width * k, image.height * k), Image.NEAREST)
    return image


def judge_caption(pred: dict) -> str:
    """What the toy judge sees, e.g. 'striped red triangle'."""
    if pred.get("shape") == "none":
        return "no object"
    return " ".join(pred.get(a, "?") for a in ("style", "colour", "shape"))
