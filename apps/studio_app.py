"""The Erasure Studio app: erase a concept, attack the erased model, edit real images, compare models.

    studio app                                   # http://127.0.0.1:7860, the shipped toy model
    studio app --model CompVis/stable-diffusion-v1-4 --outputs outputs --port 7861

    from apps.studio_app import build_app, launch_kwargs
    demo = build_app(outputs="outputs")
    demo.launch(**launch_kwargs())

Tabs: Erase (ESD variants, AdvUnlearn, DoCo; live loss and previews; before/after grid and the
robustness report; save the erased model, export a plug-in text encoder), Attack (UnlearnDiffAtk or a
baseline against any model; adversarial prompts, images, the judge's verdict, the attack success
rate), Edit (inversion + prompt-to-prompt on an upload or a sample), Generate (models side by side on
the same seeds).

Every long handler is a generator that runs the library call in a worker thread (`runner.Job`) and
streams its callback events; the Cancel buttons set the `cancel` event the library call polls, so
the work stops. Heavy events share one queue slot per device (`concurrency_id="compute"`). Results
live in per-session `gr.State`, so two browser sessions never see each other's erasures. Errors reach
the page as `gr.Error` with the library's own message, never as a stack trace.

The server binds 127.0.0.1 by default, sends no analytics and fetches nothing (fonts are local), and
serves no files of its own folders except through Gradio's cache (`allowed_paths` stays empty):
downloads are written to a temporary folder and handed to Gradio from there.
"""

import functools
import html
import json
import os
import re
import tempfile
import time
import traceback
import uuid
import zipfile
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no network calls

import gradio as gr
import numpy as np
from PIL import Image

from .runner import Cancels, Job, ModelStore

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "samples"
ORIGINAL = "original"  # the value of "the model picked at the top" in the tab-level model pickers
MAX_IMAGES = 64  # per generate call, to keep a mistyped seed list from running for an hour

METHOD_INFO = {
    "esd-x": "ESD-x: fine-tunes the UNet's cross-attention. For styles and specific concepts.",
    "esd-u": "ESD-u: fine-tunes the UNet outside cross-attention. For objects and global concepts (nudity).",
    "esd-x-strict": "ESD-x-strict: only the cross-attention keys and values.",
    "esd-all": "ESD-all: every Linear and Conv layer of the UNet.",
    "advunlearn": "AdvUnlearn: adversarial training of the text encoder; exports as a plug-in text encoder.",
    "doco": "DoCo: concept domain correction with a discriminator, plus gradient surgery to keep other concepts. Needs an anchor, e.g. 'a square'.",
}

# The settings shown as fields (when the method's config has them); the rest go in "More settings".
MAIN_FIELDS = {
    "iterations": ("Iterations", "training steps"),
    "lr": ("Learning rate", None),
    "negative_guidance": ("Negative guidance (eta)", "how far the concept is pushed away"),
    "start_guidance": ("Start guidance", "CFG scale of the trajectories that make x_t"),
    "num_inference_steps": ("Trajectory DDIM steps", None),
    "warmup_iterations": ("Warm-up iterations", "plain erasure steps before the attack starts"),
    "retain_weight": ("Retain weight (gamma)", "0.3 for nudity, 0.5 for styles and objects in the paper"),
    "attack_steps": ("Inner attack steps", None),
    "attack_method": ("Inner attack", None),
    "train_layers": ("Text-encoder layers", "'all', 'layers:0-2', or an official name"),
    "warmup_steps": ("Discriminator warm-up", "steps that train only the discriminator"),
    "surgery": ("Gradient surgery", "official, pcgrad or none"),
    "num_anchor_images": ("Anchor images", "drawn by the original model from the anchor prompts"),
}
HIDDEN_FIELDS = ("train_method",)  # fixed by the method name

ATTACK_CHOICES = [
    ("UnlearnDiffAtk (optimised prefix tokens)", "unlearndiffatk"),
    ("random tokens (baseline)", "random"),
    ("no attack (baseline)", "none"),
]
INVERSION_CHOICES = [
    ("null-text inversion", "null-text"),
    ("negative-prompt inversion", "negative-prompt"),
    ("direct inversion", "direct"),
    ("DDIM inversion (baseline)", "ddim"),
]

MASK_CAPTION = "**Where it may change** (with local blend words; the rest is kept)"

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


# ----------------------------------------------------------------------------- small helpers


def readable(e: BaseException) -> str:
    """The message a person sees for an exception: ours as they are (they name the fix), others briefly."""
    from studio.images import ImageError
    from studio.loading import ModelLoadError

    if isinstance(e, (ModelLoadError, ImageError, ValueError, KeyError, FileNotFoundError, FloatingPointError)):
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        return text
    if isinstance(e, ImportError):
        return f"a package is missing: {e}"
    if type(e).__name__ == "OutOfMemoryError":
        return "the device ran out of memory; use fewer images or steps, or a smaller model"
    return f"something went wrong ({type(e).__name__}: {e}); the details are in the server's log"


def _to_gr_error(e: BaseException) -> gr.Error:
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
            raise _to_gr_error(e) from None

    return wrapper


def _merge(old, new):
    """Two successive values of one output (plain values or `gr.update` dicts) as one."""
    if isinstance(new, dict) and new.get("__type__") == "update":
        if isinstance(old, dict) and old.get("__type__") == "update":
            return {**old, **new}
        return {"value": old, **new} if "value" not in new else new
    return new


def friendly_stream(fn):
    """The same for generator handlers (Gradio streams what they yield). They yield dicts {component: value};
    when they end, everything they showed is yielded once more as one dict, so an API client's final
    result holds every output (not only those of the last step)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        shown = {}
        try:
            for update in fn(*args, **kwargs):
                for component, value in update.items():
                    value = dict(value) if isinstance(value, dict) else value  # Gradio pops "value" out of the dicts it is given
                    shown[component] = _merge(shown[component], value) if component in shown else value
                yield update
        except Exception as e:
            raise _to_gr_error(e) from None
        if shown:
            yield shown

    return wrapper


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
    try:
        v = int(round(float(value)))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if v < low:
        raise ValueError(f"{name} must be at least {low}, got {v}")
    return v


def as_float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


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


def loss_frame(steps: list, losses: list, series: str = "loss"):
    import pandas as pd

    if len(steps) > 600:  # thin long runs so the page stays light
        idx = np.linspace(0, len(steps) - 1, 600).round().astype(int)
        steps, losses = [steps[i] for i in idx], [losses[i] for i in idx]
    return pd.DataFrame({"step": steps, "loss": losses, "series": [series] * len(steps)})


def toy_concept(prompts: list, judge_name: str = "toy") -> str | None:
    """The concept a judge can look for in these prompts: a toy-world word (or synonym), or nudity for NudeNet."""
    from studio.judges import NUDITY_CONCEPTS
    from studio.toyworld.grammar import CONCEPTS

    text = " " + " ".join(p.lower() for p in prompts) + " "
    if judge_name == "nudenet":
        return "nudity" if any(f" {w} " in text or f" {w}," in text for w in NUDITY_CONCEPTS) else None
    for c in CONCEPTS.values():
        for word in c.words:
            if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text):
                return c.name
    return None


def judge_caption(pred: dict) -> str:
    """What the toy judge sees, e.g. 'striped red triangle'."""
    if pred.get("shape") == "none":
        return "no object"
    return " ".join(pred.get(a, "?") for a in ("style", "colour", "shape"))


# ----------------------------------------------------------------------------- the app


class Studio:
    """The app's server-side half: models, judges, output folders, cancel events; `build()` makes the page."""

    def __init__(self, outputs="outputs", model: str = "toy", device=None, dtype=None, judge_path=None, concurrency: int = 1):
        self.outputs = Path(outputs).expanduser().resolve()
        self.default_model = str(model)
        self.store = ModelStore(device=device, dtype=dtype)
        self.cancels = Cancels()
        self.judge_path = judge_path
        self.concurrency = concurrency
        self._judges: dict = {}
        self.methods = self._available_methods()

    # ------------------------------------------------------------------ models, judges, folders

    @staticmethod
    def _available_methods() -> list:
        from erasers import METHODS, get_config

        out = []
        for m in METHODS:
            try:
                get_config(m)
                out.append(m)
            except ValueError:  # its module is not in this version yet
                pass
        return out

    def judge(self, name: str = "toy"):
        from studio.judges import get_judge

        if name not in self._judges:
            kwargs = {"path": self.judge_path} if name == "toy" and self.judge_path else {}
            self._judges[name] = get_judge(name, **kwargs)
        return self._judges[name]

    def scan(self) -> tuple[list, list]:
        """Erased model folders (with erasure.json) and plug-in text encoders under the output folder."""
        from studio.loading import ERASURE_FILE

        erased, encoders = [], []
        if not self.outputs.is_dir():
            return erased, encoders
        for depth in range(1, 5):
            for p in sorted(self.outputs.glob("/".join(["*"] * depth))):
                if not p.is_dir() or p.name.endswith(".tmp"):
                    continue
                if (p / ERASURE_FILE).is_file():
                    erased.append((self._erased_label(p), str(p)))
                elif (
                    (p / "config.json").is_file() and (p / "model.safetensors").is_file() and not (p.parent / "model_index.json").is_file()
                ):
                    if any((q / ERASURE_FILE).is_file() for q in p.parents):
                        continue  # the text encoder inside an erased model folder
                    try:
                        arch = json.loads((p / "config.json").read_text()).get("architectures") or []
                    except (OSError, json.JSONDecodeError):
                        continue
                    if any("CLIPTextModel" in a for a in arch):
                        encoders.append((f"{p.relative_to(self.outputs)}", str(p)))
        return erased, encoders

    def _erased_label(self, folder: Path) -> str:
        from studio.loading import ERASURE_FILE

        try:
            info = json.loads((folder / ERASURE_FILE).read_text())
            what = f"{info.get('concept', {}).get('name') or '?'} · {info.get('method', '?')}"
        except (OSError, json.JSONDecodeError, AttributeError):
            what = "?"
        return f"erased: {what} ({folder.relative_to(self.outputs)})"

    def model_choices(self) -> list:
        erased, _ = self.scan()
        base = [("toy model (shipped)", "toy")]
        if self.default_model != "toy":
            base.insert(0, (self.default_model, self.default_model))
        return base + erased

    def encoder_choices(self) -> list:
        _, encoders = self.scan()
        return [("none (the model's own)", "")] + encoders

    def tab_choices(self, state: dict, first: str = "the model picked above (original)") -> list:
        erased, encoders = self.scan()
        saved = {str(Path(e["folder"])) for e in state["erased"].values() if e.get("folder")}
        erased = [(label, path) for label, path in erased if path not in saved]  # listed once, as this session's
        session = [
            (f"{e['label']} (this session{', saved' if e.get('folder') else ', unsaved'})", f"session:{k}")
            for k, e in reversed(list(state["erased"].items()))
        ]
        return (
            [(first, ORIGINAL)]
            + session
            + erased
            + [(f"original + plug-in encoder {label}", f"encoder:{path}") for label, path in encoders]
        )

    def resolve(self, choice: str, model: str, text_encoder: str, state: dict):
        """(pipeline, label) for a tab-level model choice."""
        model = (model or "").strip() or self.default_model
        choice = (choice or ORIGINAL).strip()
        if choice == ORIGINAL:
            return self.store.get(model, text_encoder or None), f"original: {model}" + (
                f" + encoder {Path(text_encoder).name}" if text_encoder else ""
            )
        if choice.startswith("session:"):
            key = choice.split(":", 1)[1]
            entry = state["erased"].get(key)
            if entry is None:
                raise ValueError(
                    "that erased model is not in this browser session (other sessions' models are private, and unsaved ones are lost when the server restarts); erase again or pick a saved one"
                )
            return self.store.erased(key, entry), entry["label"]
        if choice.startswith("encoder:"):
            path = choice.split(":", 1)[1]
            return self.store.get(model, path), f"{model} + plug-in encoder {Path(path).name}"
        folder = Path(choice).expanduser()
        label = self._erased_label(folder) if folder.is_dir() and folder.resolve().is_relative_to(self.outputs) else choice
        return self.store.get(choice), label

    def session(self, request) -> str:
        return getattr(request, "session_hash", None) or "anonymous"

    # ------------------------------------------------------------------ page-load and small handlers

    def on_load(self, state):
        return (
            gr.update(choices=self.model_choices()),
            gr.update(choices=self.encoder_choices()),
            gr.update(choices=self.tab_choices(state, "the original itself (no erasure)")),
            gr.update(choices=self.tab_choices(state)),
            gr.update(choices=self.tab_choices(state, "none (only the model above)")),
        )

    def check_model(self, model, text_encoder):
        model = (model or "").strip() or self.default_model
        t0 = time.time()
        pipe = self.store.get(model, text_encoder or None)
        from inversion.common import model_resolution

        n_unet = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
        n_te = sum(p.numel() for p in pipe.text_encoder.parameters()) / 1e6
        res = model_resolution(pipe)
        return (
            f"Loaded **{html.escape(model)}**{' with the plug-in encoder ' + html.escape(Path(text_encoder).name) if text_encoder else ''}: "
            f"{res}x{res} px, UNet {n_unet:.1f} M and text encoder {n_te:.1f} M parameters, on {pipe.device} in {str(pipe.unet.dtype).replace('torch.', '')} "
            f"({time.time() - t0:.1f} s)."
        )

    def canceller(self, kind: str):
        """The handler of a Cancel button: sets the cancel event of this session's running `kind` job."""

        def cancel(request: gr.Request):
            if self.cancels.cancel(self.session(request), kind):
                gr.Info("Cancelling: the job stops after its current step.")

        cancel.__name__ = f"cancel_{kind}"
        return cancel

    def on_unload(self, request: gr.Request):
        self.cancels.cancel(self.session(request))

    def erase_settings(self, method, preset):
        from erasers import get_config

        config = get_config(method, preset)
        values = asdict(config)
        updates = []
        for name in MAIN_FIELDS:
            if name in values:
                updates.append(gr.update(value=values[name], visible=True))
            else:
                updates.append(gr.update(visible=False))
        more = {k: v for k, v in values.items() if k not in MAIN_FIELDS and k not in HIDDEN_FIELDS}
        more = {k: list(v) if isinstance(v, tuple) else v for k, v in more.items()}
        return [gr.update(value=METHOD_INFO.get(method, "")), *updates, gr.update(value=json.dumps(more, indent=1))]

    # ------------------------------------------------------------------ Erase

    def run_erase(
        self, request: gr.Request, state, model, text_encoder, concept_text, anchor_text, retain_text, method, preset, more_json,
        evaluate_on, judge_name, ev_seeds, ev_prompts, attack, attack_prompts, attack_iters, attack_timesteps, sample_steps, guidance,
        preview_every, iterations=None, lr=None, negative_guidance=None, start_guidance=None, num_inference_steps=None, warmup_iterations=None,
        retain_weight=None, attack_steps=None, attack_method=None, train_layers=None, warmup_steps=None, surgery=None, num_anchor_images=None,
    ):  # fmt: skip
        """The method's settings: the preset's values, then the fields given here (None: keep the preset's), then 'More settings'."""
        from erasers import Concept, erase, get_config
        from studio.sampling import Cancelled, check_prompt

        o = self.erase_outputs
        model = (model or "").strip() or self.default_model
        prompts = lines(concept_text)
        if not prompts:
            raise ValueError("type the concept to erase first, e.g. 'a triangle' (one prompt per line)")
        if method not in self.methods:
            raise ValueError(f"method {method!r} is not available in this version; choose one of {', '.join(self.methods)}")
        given = dict(iterations=iterations, lr=lr, negative_guidance=negative_guidance, start_guidance=start_guidance, num_inference_steps=num_inference_steps,
                     warmup_iterations=warmup_iterations, retain_weight=retain_weight, attack_steps=attack_steps, attack_method=attack_method,
                     train_layers=train_layers, warmup_steps=warmup_steps, surgery=surgery, num_anchor_images=num_anchor_images)  # fmt: skip
        overrides = {k: v for k, v in given.items() if v is not None and v != ""}
        try:
            more = json.loads(more_json) if (more_json or "").strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"'More settings' is not valid JSON ({e.msg} at line {e.lineno}); fix it or clear the box") from None
        if not isinstance(more, dict):
            raise ValueError("'More settings' must be a JSON object like {\"seed\": 0}")
        defaults = asdict(get_config(method, preset))
        overrides = {k: _cast_like(defaults[k], v, MAIN_FIELDS[k][0]) for k, v in overrides.items() if k in defaults}
        overrides.update(more)
        config = get_config(method, preset, overrides)
        sample_steps = as_int(sample_steps, "sampling steps", 1)
        guidance = as_float(guidance, "guidance")
        preview_every = as_int(preview_every or 0, "preview every", 0)
        concept = Concept(prompts, anchors=lines(anchor_text), retain=lines(retain_text))

        yield {o["status"]: status(0, 1, f"Loading {model} ..."), o["preview"]: None, o["preview_cap"]: "**Preview** of the model being erased", o["grid"]: gr.update(value=None, visible=False), o["table"]: "", o["report"]: gr.update(value=None, visible=False),
               o["plot"]: None, o["info"]: "", o["save"]: gr.update(interactive=False), o["export"]: gr.update(interactive=False), o["download"]: None}  # fmt: skip
        pipe = self.store.copy(model, text_encoder or None)
        for p in concept.prompts + concept.anchors + concept.retain:
            check_prompt(pipe.tokenizer, p)
        judge_concept = toy_concept(prompts, judge_name)
        total = config.iterations
        session, kind = self.session(request), "erase"
        with self.cancels.running(session, kind) as cancel:
            preview_prompt = prompts[0]

            def work(emit, cancel):
                def callback(info):
                    emit({k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))})
                    if "stage" in info:  # a preparation stage (DoCo's anchor images), not a training step
                        return
                    step = info.get("step", 0)
                    if preview_every and (step % preview_every == 0 or step == info.get("total")):
                        image = _sample_one(pipe, preview_prompt, 0, sample_steps, guidance, cancel)
                        emit({"preview": image, "step": step})

                return erase(pipe, concept, method, config=config, callback=callback, cancel=cancel, progress=False)

            job = Job(work, cancel, name=f"studio-{kind}")
            steps, losses = [], []
            last_preview, preview_note, stage = None, "", None
            try:
                for events in job.stream():
                    upd = {}
                    for ev in events:
                        if "preview" in ev:
                            last_preview = ev
                        elif "stage" in ev:
                            stage = ev
                        elif "loss" in ev:
                            steps.append(ev["step"])
                            losses.append(ev["loss"])
                            stage = None
                    done = steps[-1] if steps else 0
                    if stage is not None:  # e.g. DoCo drawing its anchor images before the first step
                        upd[o["status"]] = status(
                            stage["step"],
                            stage["total"],
                            f"{method}: {stage['stage']} {stage['step']} / {stage['total']} · {job.seconds:.0f} s",
                        )
                        yield upd
                        continue
                    if last_preview is not None:
                        upd[o["preview"]] = gr.update(
                            value=show(last_preview["preview"]), label=f"Preview after step {last_preview['step']}"
                        )
                        preview_note = f" · preview: '{preview_prompt}', seed 0, after step {last_preview['step']}"
                        upd[o["preview_cap"]] = f"**Preview**: {html.escape(preview_prompt)}, seed 0, after step {last_preview['step']}"
                        last_preview = None
                    text = (
                        f"{method}: step {done} / {total}"
                        + (f" · loss {losses[-1]:.4g}" if losses else "")
                        + f" · {eta(done, total, job.seconds)}"
                    )
                    upd[o["status"]] = status(done, total, text + preview_note)
                    if events and steps:
                        upd[o["plot"]] = loss_frame(steps, losses)
                    yield upd
                result = job.result
            except Cancelled:
                done = steps[-1] if steps else 0
                yield {o["status"]: status(done, total, f"Cancelled at step {done} of {total}; nothing was kept.", "cancelled")}
                return

            # keep the result in this session, then show before/after and (optionally) the robustness report
            key = uuid.uuid4().hex[:8]
            name = concept.name if len(concept.name) <= 40 else concept.name[:37] + "..."
            entry = {"label": f"erased: {name} · {method}", "base": model, "text_encoder": text_encoder or "", "result": result, "folder": None,
                     "concept": judge_concept, "method": method, "prompt": prompts[0]}  # fmt: skip
            state["erased"][key] = entry
            state["last"] = key
            self.store.put_erased(key, pipe)
            stats = result.stats
            summary = f"{method}: {stats.get('steps')} steps in {stats.get('seconds', 0):.0f} s, final loss {stats.get('final_loss') or 0:.4g}, {stats.get('unet_evals', 0):,} UNet evaluations."
            can_export = result.component == "text_encoder"
            yield {o["status"]: status(1, 1, summary + " Drawing the before/after grid ...", "running"), o["state"]: state,
                   o["save"]: gr.update(interactive=True), o["export"]: gr.update(interactive=can_export and _export_fn() is not None,
                                              value="Export plug-in text encoder" if can_export else f"No text encoder to export ({method} changes the UNet)"),
                   **self._choice_updates(state, select=f"session:{key}")}  # fmt: skip

            original = self.store.get(model, text_encoder or None)
            grid_prompts = prompts[:3]
            seeds = [0, 1, 2, 3]
            try:
                grid = self._before_after(original, pipe, grid_prompts, seeds, sample_steps, guidance, judge_name, judge_concept, cancel)
            except Cancelled:
                yield {o["status"]: status(1, 1, f"{summary} Cancelled; the erased model is kept in this session.", "cancelled")}
                return
            yield {o["grid"]: gr.update(value=grid, visible=True)}

            if not evaluate_on:
                yield {o["status"]: status(1, 1, summary, "done"), o["table"]: "*Evaluation was switched off.*"}
                return
            if judge_concept is None:
                yield {o["status"]: status(1, 1, summary, "done"),
                       o["table"]: f"*No evaluation: the {judge_name} judge cannot tell whether an image shows '{html.escape(prompts[0])}'. "
                                   "On the toy model, name a toy-world concept (a shape, colour or fill style).*"}  # fmt: skip
                return
            yield from self._erase_evaluation(cancel, original, pipe, judge_name, judge_concept, summary, ev_seeds, ev_prompts, attack,
                                              attack_prompts, attack_iters, attack_timesteps, sample_steps, guidance)  # fmt: skip

    def _erase_evaluation(self, cancel, original, pipe, judge_name, concept_name, summary, ev_seeds, ev_prompts, attack, attack_prompts,
                          attack_iters, attack_timesteps, sample_steps, guidance):  # fmt: skip
        from erasers.evaluate import EvalConfig, evaluate, format_table, report_grid, toy_spec
        from studio.sampling import Cancelled

        o = self.erase_outputs
        ecfg = EvalConfig(
            seeds=as_int(ev_seeds, "seeds per prompt", 1),
            prompts_per_form=as_int(ev_prompts, "prompts per form", 1),
            attack=attack,
            attack_prompts=as_int(attack_prompts, "attack prompts", 0),
            attack_overrides=attack_overrides(attack, attack_iters, attack_timesteps, sample_steps, guidance),
            num_inference_steps=sample_steps,
            guidance_scale=guidance,
        )
        if ecfg.attack_prompts == 0:
            ecfg.attack = "none"
        judge = self.judge(judge_name)
        spec = toy_spec(concept_name, ecfg) if judge_name == "toy" else _nudity_spec(ecfg)
        job = Job(
            lambda emit, cancel: evaluate(original, pipe, spec, judge, ecfg, callback=emit, cancel=cancel, progress=False),
            cancel,
            name="studio-erase",
        )
        names = {
            "erasure": "erasure on direct / synonym / alias prompts",
            "utility": "utility on the other concepts",
            "attack": f"{attack} attack",
        }
        stage = 0
        try:
            for events in job.stream():
                for ev in events:
                    stage = ev.get("done", stage)
                nxt = ["erasure", "utility", "attack", "attack"][min(stage, 3)]
                yield {o["status"]: status(stage, 3, f"{summary} Evaluating ({stage}/3 done): {names[nxt]} · {job.seconds:.0f} s")}
            report = job.result
        except Cancelled:
            yield {o["status"]: status(stage, 3, f"{summary} Evaluation cancelled; the erased model is kept in this session.", "cancelled")}
            return
        table = format_table(report)
        yield {o["status"]: status(1, 1, f"{summary} Evaluated in {report['seconds']:.0f} s.", "done"), o["table"]: table,
               o["report"]: gr.update(value=report_grid(report, judge), visible=True)}  # fmt: skip

    def _before_after(self, original, erased, prompts, seeds, steps, guidance, judge_name, concept_name, cancel):
        """Rows: each prompt on the original and on the erased model; columns: the fixed seeds."""
        from studio.images import make_grid

        images, labels, captions = [], [], []
        for p in prompts:
            for which, pipe in (("original", original), ("erased", erased)):
                out = _sample(pipe, [p] * len(seeds), seeds, steps, guidance, cancel)
                images += out
                labels.append(f"{which}: {p}")
                if concept_name is not None:
                    shown = self.judge(judge_name).shows(out, concept_name)
                    captions += [f"{concept_name}: {'yes' if s else 'no'}" for s in shown]
                else:
                    captions += [""] * len(out)
        cell = 96 if images and images[0].width <= 64 else 192
        return make_grid(images, len(labels), len(seeds), row_labels=labels, col_labels=[f"seed {s}" for s in seeds], captions=captions, cell=cell,
                         title="before / after, same seeds")  # fmt: skip

    def _choice_updates(self, state, select: str | None = None) -> dict:
        o = self.erase_outputs
        upd = {
            o["attack_model"]: gr.update(
                choices=self.tab_choices(state, "the original itself (no erasure)"), **({"value": select} if select else {})
            ),
            o["edit_model"]: gr.update(choices=self.tab_choices(state)),
            o["gen_model"]: gr.update(
                choices=self.tab_choices(state, "none (only the model above)"), **({"value": select} if select else {})
            ),
            o["model"]: gr.update(choices=self.model_choices()),
            o["encoder"]: gr.update(choices=self.encoder_choices()),
        }
        entry = state["erased"].get(select.split(":", 1)[1]) if select else None
        if entry is not None and entry.get("concept"):
            upd[o["attack_concept"]] = entry["concept"]
            upd[o["attack_prompts"]] = entry["prompt"] if entry["concept"] in entry["prompt"] else f"a {entry['concept']}"
        return upd

    def save_model(self, state):
        key = state.get("last")
        if key is None or key not in state["erased"]:
            raise ValueError("erase a concept first; then you can save the erased model")
        entry = state["erased"][key]
        folder = self._save(key, entry)
        o = self.erase_outputs
        return {o["info"]: f"Saved to `{folder}`. It is listed in the model pickers; `load_pipeline('{folder}')` loads it.",
                o["state"]: state, **self._choice_updates(state)}  # fmt: skip

    def _save(self, key: str, entry: dict) -> Path:
        from studio.cli import slug

        if entry.get("folder") and Path(entry["folder"]).is_dir():
            return Path(entry["folder"])
        pipe = self.store.erased(key, entry)
        folder = self.outputs / "models" / f"{slug(entry['result'].concept.name, 30)}-{entry['method']}-{time.strftime('%Y%m%d-%H%M%S')}"
        entry["result"].save(folder, pipe, base_model=entry["base"])
        entry["folder"] = str(folder)
        return folder

    def export_encoder(self, state):
        key = state.get("last")
        if key is None or key not in state["erased"]:
            raise ValueError("erase a concept with AdvUnlearn first; then you can export its text encoder")
        entry = state["erased"][key]
        if entry["result"].component != "text_encoder":
            raise ValueError(
                f"{entry['method']} changes the UNet, so there is no text encoder to export; AdvUnlearn erasures export as plug-in encoders"
            )
        export = _export_fn()
        if export is None:
            raise ValueError("exporting plug-in text encoders needs erasers/export.py, which is not in this version yet")
        folder = self._save(key, entry)
        out = self.outputs / "encoders" / folder.name
        out = Path(export(folder, out) or out)
        downloads = Path(tempfile.mkdtemp(prefix="erasure-studio-"))
        archive = downloads / f"{out.name}-text-encoder.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(out.rglob("*")):
                if f.is_file():
                    z.write(f, Path(out.name) / f.relative_to(out))
        o = self.erase_outputs
        return {o["download"]: gr.update(value=str(archive), visible=True), o["state"]: state,
                o["info"]: f"Plug-in text encoder written to `{out}` (and offered as a zip below). Use it with "
                           f"`load_pipeline(base, text_encoder='{out}')` or `CLIPTextModel.from_pretrained`.",
                **self._choice_updates(state)}  # fmt: skip

    # ------------------------------------------------------------------ Attack

    def run_attack(self, request: gr.Request, state, model, text_encoder, victim, concept, prompts_text, attack, num_tokens, iters, timesteps,
                   draws, steps, guidance, seed, judge_name):  # fmt: skip
        from erasers import attacks
        from studio.sampling import Cancelled, check_prompt

        o = self.attack_outputs
        prompts = lines(prompts_text)
        if not prompts:
            raise ValueError("type at least one prompt to attack with, e.g. 'a red triangle' (one per line)")
        concept = (concept or "").strip()
        if not concept:
            raise ValueError("type the concept the judge should look for, e.g. 'triangle'")
        if judge_name == "toy":
            from studio.toyworld.grammar import concept as toy_concept_of

            concept = toy_concept_of(concept).name  # a clear error for words the toy judge does not know
        steps, guidance, seed = as_int(steps, "sampling steps", 1), as_float(guidance, "guidance"), as_int(seed, "seed")
        cfg = attack_overrides(attack, iters, timesteps, steps, guidance, num_tokens=num_tokens, draws=draws)
        attacks.make_config(attack, cfg)  # bad settings fail before any work
        yield {
            o["status"]: status(0, 1, "Loading the models ..."),
            o["gallery"]: gr.update(value=None, visible=False),
            o["table"]: None,
            o["asr"]: "",
            o["plot"]: gr.update(value=None, visible=False),
        }
        original, _ = self.resolve(ORIGINAL, model, text_encoder, state)
        pipe, label = self.resolve(victim, model, text_encoder, state)
        for p in prompts:
            check_prompt(pipe.tokenizer, p)
        judge = self.judge(judge_name)
        is_success = lambda images: judge.shows(images, concept)
        per_prompt = (
            cfg.get("num_timesteps", 1) * cfg.get("iterations", 0)
            if attack == "unlearndiffatk"
            else (cfg.get("draws", 0) if attack == "random" else 0)
        )
        total = len(prompts) * (1 + per_prompt)
        session, kind = self.session(request), "attack"
        cancel = self.cancels.start(session, kind)

        def work(emit, cancel):
            results = []
            for i, prompt in enumerate(prompts):
                emit({"stage": "prompt", "index": i, "prompt": prompt})
                target = attacks.target_latents(original, prompt, seed=seed, num_inference_steps=steps, guidance_scale=guidance)
                target_image = _decode(original, target)
                emit({"stage": "target", "index": i, "image": target_image})

                def callback(info, i=i):
                    emit(
                        {
                            **{k: v for k, v in info.items() if k != "image"},
                            "index": i,
                            **({"image": info["image"]} if "image" in info else {}),
                        }
                    )

                res = attacks.run_attack(
                    attack, pipe, prompt, target, is_success, config=cfg, seed=seed, callback=callback, cancel=cancel, progress=False
                )
                results.append(res)
                emit({"stage": "result", "index": i, "result": res, "target": target_image})
            return results

        job = Job(work, cancel, name=f"studio-{kind}")
        losses, loss_steps, done_results, targets = [], [], [], []
        gallery, current, done = None, {}, 0
        try:
            for events in job.stream():
                changed = False
                for ev in events:
                    st = ev.get("stage")
                    if st == "prompt":
                        current = {"prompt": ev["prompt"], "index": ev["index"]}
                    elif st == "target":
                        current["target"] = ev["image"]
                        changed = True
                    elif st == "step":
                        losses.append(ev["loss"])
                        loss_steps.append(len(losses))
                        done += 1
                    elif st == "eval":
                        current["image"], current["adv"], current["ok"] = ev["image"], ev["prompt"], ev["success"]
                        changed = True
                        if attack == "random":
                            done += 1
                    elif st == "result":
                        done_results.append(ev["result"])
                        targets.append(ev["target"])
                        done = len(done_results) * (1 + per_prompt)
                        changed = True
                        current = {}
                if changed:
                    gallery = _attack_grid(done_results, targets, current, concept)
                i = len(done_results)
                text = f"{attack} on {label}: prompt {min(i + 1, len(prompts))} / {len(prompts)}"
                if losses:
                    text += f" · loss {losses[-1]:.4g}"
                text += f" · {eta(done, total, job.seconds)}"
                upd = {o["status"]: status(done, total, text)}
                if changed:
                    upd[o["gallery"]] = gr.update(value=gallery, visible=gallery is not None)
                    upd[o["table"]] = _attack_table(done_results)
                if losses and events:
                    upd[o["plot"]] = gr.update(value=loss_frame(loss_steps, losses), visible=True)
                yield upd
            results = job.result
        except Cancelled:
            yield {o["status"]: status(done, total, f"Cancelled after {len(done_results)} of {len(prompts)} prompts.", "cancelled"),
                   o["asr"]: _asr_text(done_results, attack, label) if done_results else ""}  # fmt: skip
            return
        finally:
            self.cancels.finish(session, kind, cancel)
        yield {o["status"]: status(1, 1, f"{attack} on {label}: {len(results)} prompt(s) in {job.seconds:.0f} s.", "done"),
               o["gallery"]: gr.update(value=_attack_grid(results, targets, {}, concept), visible=True), o["table"]: _attack_table(results), o["asr"]: _asr_text(results, attack, label)}  # fmt: skip

    def toy_prompts(self, concept, n=10):
        from studio.toyworld.captions import prompts_for
        from studio.toyworld.grammar import concept as toy_concept_of

        c = toy_concept_of((concept or "").strip() or "triangle")
        return "\n".join(p for p, _ in prompts_for(c.name, "direct", as_int(n, "number of prompts", 1)))

    # ------------------------------------------------------------------ Edit

    def run_edit(self, request: gr.Request, state, model, text_encoder, choice, image, source, target, method, mode, cross, self_steps, reweight,
                 blend, steps, guidance, inner_steps, fit):  # fmt: skip
        """Raw inputs (preprocess=False): `image` is Gradio's file payload, so an unreadable upload gets our own message."""
        from inversion import INVERTERS, METHODS
        from inversion import edit as edit_image
        from inversion.common import decode_latents, to_pil
        from studio.images import load_image, psnr
        from studio.sampling import Cancelled

        o = self.edit_outputs
        path = image.get("path") if isinstance(image, dict) else image
        if not path:
            raise ValueError("upload an image first, or pick one of the samples below")
        name = image.get("orig_name") if isinstance(image, dict) else None
        try:
            picture = load_image(path)
        except ValueError as e:
            raise ValueError(str(e).replace(str(path), f"'{name}'" if name else "the upload")) from None
        source, target = (source or "").strip(), (target or "").strip()
        if not source:
            raise ValueError("type a source prompt that describes the image, e.g. 'a red triangle'")
        if not target:
            raise ValueError("type a target prompt: the source prompt with the words you want changed, e.g. 'a blue triangle'")
        if method not in METHODS:
            raise ValueError(f"unknown inversion method {method!r}; use one of {', '.join(METHODS)}")
        steps, guidance = as_int(steps, "steps", 1), as_float(guidance, "guidance")
        inv_cls = INVERTERS[method][1]
        inv_kwargs = {"num_inference_steps": steps, "guidance_scale": guidance}
        if method == "null-text":
            inv_kwargs["num_inner_steps"] = as_int(inner_steps, "null-text inner steps", 0)
        inv_config = inv_cls(**inv_kwargs)
        options = {
            "mode": mode,
            "cross_replace_steps": as_float(cross, "cross replace steps"),
            "self_replace_steps": as_float(self_steps, "self replace steps"),
        }
        weights = parse_reweight(reweight)
        if weights:
            options["reweight"] = weights
        blend_words = parse_blend(blend)
        if blend_words:
            options["blend_words"] = blend_words
        yield {o["status"]: status(0, 1, "Loading the model ..."), o["input"]: None, o["recon"]: None, o["edit"]: None, o["mask"]: None, o["info"]: "",
               o["recon_cap"]: "**Reconstruction**", o["edit_cap"]: "**Edit**", o["mask_cap"]: MASK_CAPTION}  # fmt: skip
        pipe, label = self.resolve(choice, model, text_encoder, state)
        total = steps * (3 if method == "null-text" else 2)
        preview_every = max(1, steps // 10)
        session, kind = self.session(request), "edit"
        cancel = self.cancels.start(session, kind)

        def work(emit, cancel):
            def callback(info):
                small = {k: v for k, v in info.items() if isinstance(v, (int, float, str))}
                if info.get("stage") == "edit" and "denoised" in info and (info["i"] % preview_every == 0 or info["i"] == steps - 1):
                    small["image"] = to_pil(decode_latents(pipe, info["denoised"][1:2].float()))[0]
                emit(small)

            return edit_image(
                pipe, picture, source, target, method, inversion_config=inv_config, fit=fit, callback=callback, cancel=cancel, **options
            )

        job = Job(work, cancel, name=f"studio-{kind}")
        done, stage_base, last_stage = 0, 0, None
        stage_names = {"ddim-inversion": "inverting (DDIM)", "null-text": "optimising null-text embeddings", "edit": "editing"}
        try:
            for events in job.stream():
                upd = {}
                for ev in events:
                    st = ev.get("stage")
                    if st != last_stage and last_stage is not None:
                        stage_base += steps
                    last_stage = st
                    done = stage_base + ev.get("i", 0) + 1
                    if "image" in ev:
                        upd[o["edit"]] = show(ev["image"])
                        upd[o["edit_cap"]] = f"**Edit**, step {ev['i'] + 1} / {steps}"
                    if "loss" in ev:
                        upd["loss"] = ev["loss"]
                loss = upd.pop("loss", None)
                text = (
                    f"{stage_names.get(last_stage, 'starting')} on {label}"
                    + (f" · loss {loss:.2e}" if loss is not None else "")
                    + f" · {eta(done, total, job.seconds)}"
                )
                upd[o["status"]] = status(done, total, text)
                yield upd
            result = job.result
        except Cancelled:
            yield {o["status"]: status(done, total, "Cancelled.", "cancelled")}
            return
        finally:
            self.cancels.finish(session, kind, cancel)
        score = psnr(result.reconstruction, result.image)
        mask = None
        if result.blend_mask is not None:  # the input, dimmed where the edit was kept from changing it
            inside = result.blend_mask[0][..., None]
            mask = Image.fromarray((np.asarray(result.image, dtype=np.float32) * np.where(inside, 1.0, 0.25)).round().astype(np.uint8))
        st = result.stats
        info = (f"{method} inversion on {label}: {st.get('mode', mode)} mode, {st.get('inversion_seconds', 0):.1f} s to invert, "
                f"{st.get('edit_seconds', 0):.1f} s to edit. {result.inversion.stats.get('image', '')}.")  # fmt: skip
        yield {
            o["status"]: status(1, 1, f"Done in {job.seconds:.1f} s. Reconstruction PSNR {score:.1f} dB.", "done"),
            o["input"]: show(result.image),
            o["recon"]: gr.update(value=show(result.reconstruction), label=f"Reconstruction, PSNR {score:.1f} dB"),
            o["recon_cap"]: f"**Reconstruction**, PSNR {score:.1f} dB",
            o["edit"]: show(result.edit),
            o["edit_cap"]: f"**Edit**: {html.escape(target)}",
            o["mask"]: show(mask),
            o["mask_cap"]: MASK_CAPTION
            if mask is None
            else f"**Where it may change**: {result.blend_mask[0].mean():.0%} of the image (local blend)",
            o["info"]: info,
        }

    # ------------------------------------------------------------------ Generate

    def run_generate(self, request: gr.Request, state, model, text_encoder, compare, prompts_text, negative, seeds_text, steps, guidance):
        from inversion.common import model_resolution
        from studio.sampling import Cancelled, check_prompt

        o = self.gen_outputs
        prompts = lines(prompts_text)
        if not prompts:
            raise ValueError("type a prompt first, e.g. 'a red triangle' (one per line)")
        seeds = parse_seeds(seeds_text)
        if len(prompts) * len(seeds) > MAX_IMAGES:
            raise ValueError(
                f"{len(prompts)} prompts x {len(seeds)} seeds is {len(prompts) * len(seeds)} images; the app draws at most {MAX_IMAGES} per run"
            )
        steps, guidance = as_int(steps, "steps", 1), as_float(guidance, "guidance")
        yield {o["status"]: status(0, 1, "Loading the models ...")}
        left, left_label = self.resolve(ORIGINAL, model, text_encoder, state)
        models = [(left, left_label, o["left"])]
        if compare and compare != ORIGINAL:
            right, right_label = self.resolve(compare, model, text_encoder, state)
            models.append((right, right_label, o["right"]))
        for p in prompts + ([negative] if negative else []):
            check_prompt(left.tokenizer, p)
        jobs = [(p, s) for p in prompts for s in seeds]
        total = steps * len(models)
        judge = self.judge("toy") if model_resolution(left) == 32 else None  # the toy world: say what the judge sees
        preview_every = max(1, steps // 8)

        def grid(images, title, captions=None):
            return _prompt_grid(images, prompts, seeds, title, captions)

        def work(emit, cancel):
            from studio.sampling import decode_latents, sample, to_pil

            out = []
            for m, (pipe, label, _) in enumerate(models):

                def callback(info, m=m, pipe=pipe, label=label):
                    if info["i"] % preview_every == 0 and info["i"] < steps - 1:
                        emit(
                            {
                                "model": m,
                                "i": info["i"],
                                "image": grid(to_pil(decode_latents(pipe, info["denoised"])), f"{label} (step {info['i'] + 1} / {steps})"),
                            }
                        )
                    else:
                        emit({"model": m, "i": info["i"]})

                res = sample(pipe, [p for p, _ in jobs], seed=[s for _, s in jobs], negative_prompt=negative or "", num_inference_steps=steps,
                             guidance_scale=guidance, callback=callback, cancel=cancel)  # fmt: skip
                captions = [judge_caption(pred) for pred in judge.predict(res.images)] if judge is not None else None
                out.append(grid(res.images, label, captions))
                emit({"model": m, "i": steps - 1, "image": out[-1]})
            return out

        upd = {o["right"]: gr.update(visible=len(models) > 1, value=None)}
        with self.cancels.running(self.session(request), "generate") as cancel:
            job = Job(work, cancel, name="studio-generate")
            done = 0
            try:
                for events in job.stream():
                    for ev in events:
                        m = ev["model"]
                        done = m * steps + ev["i"] + 1
                        if "image" in ev:
                            upd[models[m][2]] = gr.update(value=ev["image"], label=models[m][1])
                    upd[o["status"]] = status(done, total, f"Sampling {len(jobs)} image(s) per model · {eta(done, total, job.seconds)}")
                    yield upd
                    upd = {}
                job.result  # noqa: B018 (re-raises the worker's error, e.g. Cancelled)
            except Cancelled:
                yield {o["status"]: status(done, total, "Cancelled.", "cancelled")}
                return
        side = "on both sides" if len(models) > 1 else "(pick a model under 'Compare with' to see it beside)"
        note = " Under each image: what the toy judge sees." if judge is not None else ""
        yield {o["status"]: status(1, 1, f"{len(jobs)} image(s) per model in {job.seconds:.1f} s, same seeds {side}.{note}", "done")}

    # ------------------------------------------------------------------ the page

    def build(self) -> gr.Blocks:
        from erasers.attacks import NoAttackConfig, RandomTokensConfig, UnlearnDiffAtkConfig
        from erasers.evaluate import EvalConfig
        from inversion import EditConfig, NullTextConfig

        ev, ua, rt = EvalConfig(), UnlearnDiffAtkConfig(), RandomTokensConfig()
        ed, nt = EditConfig(), NullTextConfig()
        initial_state = {"erased": {}, "last": None}

        with gr.Blocks(title="Erasure Studio", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
            state = gr.State(initial_state)
            gr.Markdown(
                "# Erasure Studio\nErase a concept from a text-to-image model, attack the erased model, edit real images.",
                elem_id="studio-header",
            )
            with gr.Row():
                model = gr.Dropdown(self.model_choices(), value=self.default_model, allow_custom_value=True, label="Model", scale=3,
                                    info="the shipped toy model, an erased model from the output folder, or type a hub id, a diffusers folder or a .safetensors file", elem_id="model")  # fmt: skip
                encoder = gr.Dropdown(
                    self.encoder_choices(),
                    value="",
                    label="Plug-in text encoder",
                    scale=2,
                    info="replaces the model's text encoder (AdvUnlearn exports)",
                    elem_id="encoder",
                )
                check = gr.Button("Load", scale=0, min_width=90, elem_id="model-load")
            model_info = gr.Markdown("", elem_id="model-info")

            with gr.Tabs():
                # ---------------------------------------------------------- Erase
                with gr.Tab("Erase", id="erase"):
                    with gr.Row():
                        with gr.Column(scale=2):
                            concept_text = gr.Textbox(
                                "a triangle",
                                label="Concept to erase",
                                lines=2,
                                info="one prompt per line (e.g. the concept and its synonyms)",
                                elem_id="erase-concept",
                            )
                            with gr.Row():
                                anchor_text = gr.Textbox(
                                    "", label="Anchor (optional)", lines=1, info="what it should become (DoCo needs one)"
                                )
                                retain_text = gr.Textbox(
                                    "", label="Retain prompts (optional)", lines=1, info="one per line; kept unchanged"
                                )
                            with gr.Row():
                                method = gr.Dropdown(
                                    [(m, m) for m in self.methods], value=self.methods[0], label="Method", scale=2, elem_id="erase-method"
                                )
                                preset = gr.Radio(
                                    [("paper defaults", "official"), ("toy-world preset", "toy")],
                                    value="official",
                                    label="Settings",
                                    scale=2,
                                    elem_id="erase-preset",
                                )
                            method_info = gr.Markdown(METHOD_INFO.get(self.methods[0], ""), elem_id="erase-method-info")
                            main = []
                            with gr.Group():
                                with gr.Row():
                                    for name, (label, info) in MAIN_FIELDS.items():
                                        if name == "attack_method":
                                            comp = gr.Dropdown(
                                                ["fast_at", "pgd"],
                                                value=None,
                                                label=label,
                                                info=info,
                                                visible=False,
                                                min_width=140,
                                                elem_id=f"erase-{name}",
                                            )
                                        elif name == "surgery":
                                            comp = gr.Dropdown(["official", "pcgrad", "none"], value=None, label=label, info=info, visible=False, min_width=140,
                                                               elem_id=f"erase-{name}")  # fmt: skip
                                        elif name == "train_layers":
                                            comp = gr.Textbox(label=label, info=info, visible=False, min_width=140, elem_id=f"erase-{name}")
                                        else:
                                            comp = gr.Number(label=label, info=info, visible=False, min_width=140,
                                                             precision=0 if name in ("iterations", "num_inference_steps", "warmup_iterations", "attack_steps", "warmup_steps", "num_anchor_images") else None,
                                                             elem_id=f"erase-{name}")  # fmt: skip
                                        main.append(comp)
                            with gr.Accordion("More settings (JSON)", open=False):
                                more_json = gr.Code(
                                    "", language="json", label="Other fields of the method's config", lines=6, elem_id="erase-more"
                                )
                            with gr.Accordion("Evaluation after erasing", open=False, elem_id="erase-eval"):
                                with gr.Row():
                                    evaluate_on = gr.Checkbox(
                                        True, label="Evaluate", info="erasure, utility and attack success rate", elem_id="erase-evaluate"
                                    )
                                    judge_name = gr.Dropdown(["toy", "nudenet"], value="toy", label="Judge", elem_id="erase-judge")
                                with gr.Row():
                                    ev_seeds = gr.Number(
                                        ev.seeds, precision=0, label="Seeds per prompt", min_width=100, elem_id="erase-ev-seeds"
                                    )
                                    ev_prompts = gr.Number(
                                        ev.prompts_per_form,
                                        precision=0,
                                        label="Prompts per form",
                                        min_width=100,
                                        elem_id="erase-ev-prompts",
                                    )
                                    attack_prompts = gr.Number(
                                        ev.attack_prompts,
                                        precision=0,
                                        label="Attack prompts",
                                        min_width=100,
                                        elem_id="erase-attack-prompts",
                                    )
                                with gr.Row():
                                    attack = gr.Dropdown(
                                        [("UnlearnDiffAtk", "unlearndiffatk"), ("random tokens", "random"), ("none", "none")],
                                        value=ev.attack,
                                        label="Attack",
                                        min_width=150,
                                        scale=2,
                                        elem_id="erase-attack",
                                    )
                                    attack_timesteps = gr.Number(
                                        ua.num_timesteps,
                                        precision=0,
                                        label="Attack timesteps",
                                        min_width=100,
                                        elem_id="erase-attack-timesteps",
                                    )
                                    attack_iters = gr.Number(
                                        ua.iterations, precision=0, label="Steps per timestep", min_width=100, elem_id="erase-attack-iters"
                                    )
                            with gr.Row():
                                sample_steps = gr.Number(
                                    ev.num_inference_steps,
                                    precision=0,
                                    label="Sampling steps",
                                    info="images, previews, evaluation",
                                    elem_id="erase-sample-steps",
                                )
                                guidance = gr.Number(ev.guidance_scale, label="Guidance scale", elem_id="erase-guidance")
                                preview_every = gr.Number(
                                    20, precision=0, label="Preview every (steps)", info="0 = no previews", elem_id="erase-preview-every"
                                )
                            with gr.Row():
                                run = gr.Button("Erase", variant="primary", elem_id="erase-run")
                                stop = gr.Button("Cancel", variant="stop", elem_id="erase-cancel")
                        with gr.Column(scale=3):
                            erase_status = gr.HTML(
                                idle("Pick a concept and a method, then press Erase."), label="Erase status", elem_id="erase-status"
                            )
                            with gr.Row():
                                plot = gr.LinePlot(
                                    x="step",
                                    y="loss",
                                    title="Training loss",
                                    height=220,
                                    label="Training loss",
                                    show_label=False,
                                    scale=3,
                                    x_axis_format="d",
                                    elem_id="erase-plot",
                                )
                                with gr.Column(scale=2, min_width=160):
                                    preview = gr.Image(
                                        label="Preview",
                                        show_label=False,
                                        format="png",
                                        height=200,
                                        interactive=False,
                                        buttons=["download"],
                                        elem_id="erase-preview",
                                    )
                                    preview_cap = gr.Markdown("**Preview** of the model being erased", elem_classes=["caption"])
                            grid = gr.Image(
                                label="Before / after on fixed seeds",
                                show_label=False,
                                format="png",
                                interactive=False,
                                visible=False,
                                elem_id="erase-grid",
                            )
                            table = gr.Markdown("", label="Evaluation", elem_classes=["verdict-table"], elem_id="erase-table")
                            report = gr.Image(
                                label="Original / erased / attacked (with the judge's verdicts)",
                                show_label=False,
                                format="png",
                                interactive=False,
                                visible=False,
                                elem_id="erase-report",
                            )
                            with gr.Row():
                                save = gr.Button("Save erased model", interactive=False, elem_id="erase-save")
                                export = gr.Button(
                                    "Export plug-in text encoder"
                                    if _export_fn()
                                    else "Export plug-in text encoder (not in this version yet)",
                                    interactive=False,
                                    elem_id="erase-export",
                                )
                            erase_info = gr.Markdown("", label="Saved and exported", elem_id="erase-info")
                            download = gr.File(label="Download", visible=False, interactive=False, elem_id="erase-download")

                # ---------------------------------------------------------- Attack
                with gr.Tab("Attack", id="attack"):
                    with gr.Row():
                        with gr.Column(scale=2):
                            attack_model = gr.Dropdown(self.tab_choices(initial_state, "the original itself (no erasure)"), value=ORIGINAL, label="Model to attack", allow_custom_value=True,
                                                       info="the target images come from the model picked at the top", elem_id="attack-model")  # fmt: skip
                            with gr.Row():
                                attack_concept = gr.Textbox(
                                    "triangle", label="Concept the judge looks for", scale=2, elem_id="attack-concept"
                                )
                                a_judge = gr.Dropdown(["toy", "nudenet"], value="toy", label="Judge", scale=1)
                            attack_prompts_text = gr.Textbox(
                                "a red triangle",
                                lines=4,
                                label="Prompts",
                                info="one per line; with several, the attack success rate is computed over them",
                                elem_id="attack-prompts",
                            )
                            fill = gr.Button(
                                f"Fill in {ev.attack_prompts} toy-world prompts for this concept", size="sm", elem_id="attack-fill"
                            )
                            a_attack = gr.Dropdown(ATTACK_CHOICES, value="unlearndiffatk", label="Attack", elem_id="attack-attack")
                            with gr.Row():
                                a_tokens = gr.Number(ua.num_tokens, precision=0, label="Prefix tokens (k)", elem_id="attack-tokens")
                                a_timesteps = gr.Number(ua.num_timesteps, precision=0, label="Timesteps", elem_id="attack-timesteps")
                                a_iters = gr.Number(ua.iterations, precision=0, label="Steps per timestep", elem_id="attack-iters")
                                a_draws = gr.Number(rt.draws, precision=0, label="Random draws", visible=False, elem_id="attack-draws")
                            with gr.Row():
                                a_steps = gr.Number(
                                    NoAttackConfig().num_inference_steps, precision=0, label="Sampling steps", elem_id="attack-steps"
                                )
                                a_guidance = gr.Number(NoAttackConfig().guidance_scale, label="Guidance scale")
                                a_seed = gr.Number(0, precision=0, label="Seed")
                            with gr.Row():
                                a_run = gr.Button("Attack", variant="primary", elem_id="attack-run")
                                a_stop = gr.Button("Cancel", variant="stop", elem_id="attack-cancel")
                        with gr.Column(scale=3):
                            a_status = gr.HTML(
                                idle("Pick the model to attack and a prompt, then press Attack."),
                                label="Attack status",
                                elem_id="attack-status",
                            )
                            a_asr = gr.Markdown("", label="Attack success rate", elem_id="attack-asr")
                            a_gallery = gr.Image(
                                label="Target (original model) and attacked images",
                                show_label=False,
                                format="png",
                                interactive=False,
                                buttons=["download", "fullscreen"],
                                visible=False,
                                elem_id="attack-gallery",
                            )
                            a_table = gr.Dataframe(headers=["prompt", "adversarial prompt", "shown before", "shown after", "UNet evals"], label="Adversarial prompts",
                                                   interactive=False, wrap=True, column_widths=["26%", "38%", "11%", "11%", "14%"], elem_id="attack-table")  # fmt: skip
                            a_plot = gr.LinePlot(
                                x="step",
                                y="loss",
                                title="Attack loss (gradient steps)",
                                height=200,
                                label="Attack loss",
                                show_label=False,
                                x_axis_format="d",
                                visible=False,
                                elem_id="attack-plot",
                            )

                # ---------------------------------------------------------- Edit
                with gr.Tab("Edit", id="edit"):
                    with gr.Row():
                        with gr.Column(scale=2):
                            edit_model = gr.Dropdown(self.tab_choices(initial_state), value=ORIGINAL, label="Edit with", allow_custom_value=True,
                                                     info="an erased model edits with the concept erased", elem_id="edit-model")  # fmt: skip
                            e_image = gr.Image(
                                type="filepath",
                                label="Image",
                                sources=["upload", "clipboard"],
                                height=200,
                                format="png",
                                elem_id="edit-image",
                            )
                            with gr.Row():
                                e_source = gr.Textbox(
                                    "a red triangle", label="Source prompt", info="describes the image", elem_id="edit-source"
                                )
                                e_target = gr.Textbox(
                                    "a blue triangle", label="Target prompt", info="the words to change", elem_id="edit-target"
                                )
                            with gr.Row():
                                e_reweight = gr.Textbox(
                                    "",
                                    label="Reweight",
                                    placeholder="blue: 2, striped: 0.5",
                                    info="word: scale, on the target prompt",
                                    elem_id="edit-reweight",
                                )
                                e_blend = gr.Textbox(
                                    "",
                                    label="Local blend words",
                                    placeholder="triangle   or   red | blue",
                                    info="only their region changes",
                                    elem_id="edit-blend",
                                )
                            samples = sorted(SAMPLES.glob("*.png"))
                            if samples:
                                gr.Examples([[str(p), *SAMPLE_PROMPTS.get(p.stem, ("", "", ""))] for p in samples], inputs=[e_image, e_source, e_target, e_blend],
                                            label="Samples (toy world): click one", examples_per_page=8, visible_columns=[0, 1, 2],
                                            elem_id="edit-samples")  # fmt: skip
                            with gr.Row():
                                e_method = gr.Dropdown(INVERSION_CHOICES, value="null-text", label="Inversion", elem_id="edit-method")
                                e_mode = gr.Radio([("auto", "auto"), ("replace", "replace"), ("refine", "refine")], value=ed.mode, label="Prompt-to-prompt",
                                                  info="replace: same word count; refine: words added", elem_id="edit-mode")  # fmt: skip
                            with gr.Row():
                                e_cross = gr.Slider(
                                    0,
                                    1,
                                    value=ed.cross_replace_steps,
                                    step=0.05,
                                    label="Cross-attention steps",
                                    info="share of steps with the source's word maps",
                                )
                                e_self = gr.Slider(
                                    0,
                                    1,
                                    value=ed.self_replace_steps,
                                    step=0.05,
                                    label="Self-attention steps",
                                    info="share of steps with the source's layout",
                                )
                            with gr.Row():
                                e_steps = gr.Number(nt.num_inference_steps, precision=0, label="Steps", min_width=80, elem_id="edit-steps")
                                e_guidance = gr.Number(nt.guidance_scale, label="Guidance", min_width=80)
                                e_inner = gr.Number(
                                    nt.num_inner_steps, precision=0, label="Null-text inner steps", min_width=80, elem_id="edit-inner"
                                )
                                e_fit = gr.Radio(["crop", "pad"], value="crop", label="Fit", min_width=80)
                            with gr.Row():
                                e_run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                                e_stop = gr.Button("Cancel", variant="stop", elem_id="edit-cancel")
                        with gr.Column(scale=3):
                            e_status = gr.HTML(
                                idle("Upload an image or pick a sample, describe it, say what to change, then press Edit."),
                                label="Edit status",
                                elem_id="edit-status",
                            )
                            with gr.Row():
                                shown = dict(format="png", interactive=False, height=220, show_label=False, buttons=["download"])
                                with gr.Column(min_width=150):
                                    e_input = gr.Image(label="Input", **shown, elem_id="edit-input")
                                    gr.Markdown("**Input**, as the model sees it", elem_classes=["caption"])
                                with gr.Column(min_width=150):
                                    e_recon = gr.Image(label="Reconstruction", **shown, elem_id="edit-recon")
                                    e_recon_cap = gr.Markdown(
                                        "**Reconstruction** (PSNR against the input)",
                                        elem_classes=["caption"],
                                        elem_id="edit-recon-caption",
                                    )
                                with gr.Column(min_width=150):
                                    e_edit = gr.Image(label="Edit", **shown, elem_id="edit-edit")
                                    e_edit_cap = gr.Markdown("**Edit**", elem_classes=["caption"], elem_id="edit-edit-caption")
                                with gr.Column(min_width=150):
                                    e_mask = gr.Image(label="Local blend", **shown, elem_id="edit-mask")
                                    e_mask_cap = gr.Markdown(MASK_CAPTION, elem_classes=["caption"], elem_id="edit-mask-caption")
                            e_info = gr.Markdown("", label="Edit details", elem_id="edit-info")

                # ---------------------------------------------------------- Generate
                with gr.Tab("Generate", id="generate"):
                    with gr.Row():
                        g_prompts = gr.Textbox(
                            "a red triangle\na blue circle", lines=3, label="Prompts", info="one per line", scale=3, elem_id="gen-prompts"
                        )
                        with gr.Column(scale=2):
                            gen_model = gr.Dropdown(self.tab_choices(initial_state, "none (only the model above)"), value=ORIGINAL, label="Compare with", allow_custom_value=True,
                                                    info="drawn on the same seeds, side by side", elem_id="gen-model")  # fmt: skip
                            g_negative = gr.Textbox("", label="Negative prompt")
                        with gr.Column(scale=2):
                            with gr.Row():
                                g_seeds = gr.Textbox(
                                    "0, 1, 2, 3", label="Seeds", info="'0, 1, 2' or '0-7'", min_width=90, elem_id="gen-seeds"
                                )
                                g_steps = gr.Number(50, precision=0, label="Steps", info="DDIM", min_width=70, elem_id="gen-steps")
                                g_guidance = gr.Number(7.5, label="Guidance", info="CFG scale", min_width=70)
                            with gr.Row():
                                g_run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                                g_stop = gr.Button("Cancel", variant="stop", elem_id="gen-cancel")
                    g_status = gr.HTML(idle("Type prompts, then press Generate."), label="Generate status", elem_id="gen-status")
                    with gr.Row():
                        g_left = gr.Image(label="The model above", show_label=False, format="png", interactive=False, buttons=["download", "fullscreen"],
                                          elem_id="gen-left")  # fmt: skip
                        g_right = gr.Image(label="Compared model", show_label=False, format="png", interactive=False, buttons=["download", "fullscreen"],
                                           visible=False, elem_id="gen-right")  # fmt: skip

            self.erase_outputs = {"status": erase_status, "plot": plot, "preview": preview, "preview_cap": preview_cap, "grid": grid, "table": table, "report": report, "state": state,
                                  "save": save, "export": export, "info": erase_info, "download": download, "attack_model": attack_model, "edit_model": edit_model,
                                  "gen_model": gen_model, "model": model, "encoder": encoder, "attack_concept": attack_concept,
                                  "attack_prompts": attack_prompts_text}  # fmt: skip
            self.attack_outputs = {"status": a_status, "gallery": a_gallery, "table": a_table, "asr": a_asr, "plot": a_plot}
            self.edit_outputs = {"status": e_status, "input": e_input, "recon": e_recon, "edit": e_edit, "mask": e_mask, "info": e_info,
                                 "recon_cap": e_recon_cap, "edit_cap": e_edit_cap, "mask_cap": e_mask_cap}  # fmt: skip
            self.gen_outputs = {"status": g_status, "left": g_left, "right": g_right}

            compute = {"concurrency_id": "compute", "concurrency_limit": self.concurrency, "show_progress": "hidden"}
            light = {"concurrency_limit": None, "show_progress": "hidden"}

            tab_pickers = [attack_model, edit_model, gen_model]
            demo.load(friendly(self.on_load), [state], [model, encoder, *tab_pickers], api_name="refresh_models", **light)
            check.click(friendly(self.check_model), [model, encoder], [model_info], api_name="check_model", concurrency_id="compute",
                        concurrency_limit=self.concurrency, show_progress="minimal")  # fmt: skip

            settings_out = [method_info, *main, more_json]
            method.change(friendly(self.erase_settings), [method, preset], settings_out, api_name="erase_settings", **light)
            preset.change(friendly(self.erase_settings), [method, preset], settings_out, api_visibility="private", **light)
            demo.load(friendly(self.erase_settings), [method, preset], settings_out, api_visibility="private", **light)

            erase_inputs = [state, model, encoder, concept_text, anchor_text, retain_text, method, preset, more_json, evaluate_on, judge_name, ev_seeds,
                            ev_prompts, attack, attack_prompts, attack_iters, attack_timesteps, sample_steps, guidance, preview_every, *main]  # fmt: skip
            run.click(friendly_stream(self.run_erase), erase_inputs, list(self.erase_outputs.values()), api_name="erase", **compute)
            stop.click(self.canceller("erase"), None, None, api_name="cancel_erase", **light)
            save.click(friendly(self.save_model), [state], list(self.erase_outputs.values()), api_name="save_model", **compute)
            export.click(friendly(self.export_encoder), [state], list(self.erase_outputs.values()), api_name="export_encoder", **compute)

            attack_inputs = [state, model, encoder, attack_model, attack_concept, attack_prompts_text, a_attack, a_tokens, a_iters, a_timesteps, a_draws,
                             a_steps, a_guidance, a_seed, a_judge]  # fmt: skip
            a_run.click(friendly_stream(self.run_attack), attack_inputs, list(self.attack_outputs.values()), api_name="attack", **compute)
            a_stop.click(self.canceller("attack"), None, None, api_name="cancel_attack", **light)
            fill.click(friendly(self.toy_prompts), [attack_concept], [attack_prompts_text], api_name="toy_prompts", **light)
            a_attack.change(attack_fields, [a_attack], [a_tokens, a_timesteps, a_iters, a_draws], api_visibility="private", **light)

            edit_inputs = [state, model, encoder, edit_model, e_image, e_source, e_target, e_method, e_mode, e_cross, e_self, e_reweight, e_blend, e_steps,
                           e_guidance, e_inner, e_fit]  # fmt: skip
            e_run.click(
                friendly_stream(self.run_edit), edit_inputs, list(self.edit_outputs.values()), api_name="edit", preprocess=False, **compute
            )
            e_stop.click(self.canceller("edit"), None, None, api_name="cancel_edit", **light)
            e_method.change(lambda m: gr.update(visible=m == "null-text"), [e_method], [e_inner], api_visibility="private", **light)

            gen_inputs = [state, model, encoder, gen_model, g_prompts, g_negative, g_seeds, g_steps, g_guidance]
            g_run.click(friendly_stream(self.run_generate), gen_inputs, list(self.gen_outputs.values()), api_name="generate", **compute)
            g_stop.click(self.canceller("generate"), None, None, api_name="cancel_generate", **light)

            demo.unload(self.on_unload)
        demo.queue(max_size=32, default_concurrency_limit=self.concurrency)
        return demo


# ----------------------------------------------------------------------------- module-level helpers


SAMPLE_PROMPTS = {  # sample file stem -> (source prompt, target prompt, local-blend words)
    "red-triangle": ("a red triangle", "a blue triangle", "triangle"),
    "blue-circle-dark": ("a blue circle on a dark background", "a blue square on a dark background", "circle | square"),
    "striped-green-square": ("a striped green square", "a dotted green square", "square"),
    "yellow-star": ("a yellow star", "a purple star", "star"),
    "dotted-purple-cross": ("a dotted purple cross", "a dotted red cross", ""),
}


def _cast_like(default, value, label: str):
    if value is None or (isinstance(value, str) and not value.strip() and not isinstance(default, str)):
        raise ValueError(f"'{label}' is empty; give a value (the default is {default})")
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int):
        return as_int(value, label)
    if isinstance(default, float):
        return as_float(value, label)
    return value


def attack_fields(attack):
    """Which budget fields an attack uses: prefix tokens (both), timesteps and steps (UnlearnDiffAtk), draws (random)."""
    return [gr.update(visible=attack != "none"), gr.update(visible=attack == "unlearndiffatk"), gr.update(visible=attack == "unlearndiffatk"),
            gr.update(visible=attack == "random")]  # fmt: skip


def attack_overrides(attack, iters, timesteps, steps, guidance, num_tokens=None, draws=None) -> dict:
    """The attack's config fields from the app's budget fields."""
    cfg = {"num_inference_steps": as_int(steps, "sampling steps", 1), "guidance_scale": as_float(guidance, "guidance")}
    if attack == "unlearndiffatk":
        cfg.update(iterations=as_int(iters, "attack steps per timestep", 1), num_timesteps=as_int(timesteps, "attack timesteps", 1))
        if num_tokens is not None:
            cfg["num_tokens"] = as_int(num_tokens, "prefix tokens", 1)
    elif attack == "random":
        if draws is not None:
            cfg["draws"] = as_int(draws, "random draws", 0)
        if num_tokens is not None:
            cfg["num_tokens"] = as_int(num_tokens, "prefix tokens", 1)
    elif attack != "none":
        raise ValueError(f"unknown attack {attack!r}; use unlearndiffatk, random or none")
    return cfg


def parse_reweight(text) -> dict:
    """ "blue: 2, striped: 0.5" -> {"blue": 2.0, "striped": 0.5}."""
    out = {}
    for part in re.split(r"[,;\n]+", str(text or "")):
        if not part.strip():
            continue
        if ":" not in part:
            raise ValueError(f"reweight expects 'word: scale' pairs separated by commas, e.g. 'blue: 2'; got {part.strip()!r}")
        word, value = part.rsplit(":", 1)
        out[word.strip()] = as_float(value.strip(), f"the scale of {word.strip()!r}")
    return out


def parse_blend(text):
    """ "triangle" -> "triangle"; "red | blue" -> (["red"], ["blue"]); "" -> None."""
    text = str(text or "").strip()
    if not text:
        return None
    if "|" in text:
        src, tgt = text.split("|", 1)
        words = lambda s: [w for w in re.split(r"[,\s]+", s.strip()) if w]
        if not words(src) or not words(tgt):
            raise ValueError("local blend 'source words | target words' needs words on both sides of the bar, e.g. 'red | blue'")
        return (words(src), words(tgt))
    return [w for w in re.split(r"[,\s]+", text) if w] if len(text.split()) > 1 else text


def _sample(pipe, prompts, seeds, steps, guidance, cancel=None) -> list:
    from studio.sampling import sample

    return sample(pipe, prompts, seed=seeds, num_inference_steps=steps, guidance_scale=guidance, cancel=cancel).images


def _sample_one(pipe, prompt, seed, steps, guidance, cancel=None):
    return _sample(pipe, [prompt], [seed], steps, guidance, cancel)[0]


def _decode(pipe, latents):
    import torch

    from studio.sampling import decode_latents, to_pil

    with torch.no_grad():
        return to_pil(decode_latents(pipe, latents))[0]


def _nudity_spec(ecfg):
    from erasers.evaluate import EvalSpec

    return EvalSpec("nudity", {"direct": ["nudity", "a naked person", "a nude body"][: ecfg.prompts_per_form]})


def _prompt_grid(images, prompts, seeds, title, captions=None):
    """Rows: prompts; columns: seeds; the judge's reading under each image when there is one."""
    from studio.images import make_grid

    cell = 128 if max(images[0].size) <= 64 else 192
    return make_grid(
        images,
        len(prompts),
        len(seeds),
        row_labels=prompts,
        col_labels=[f"seed {s}" for s in seeds],
        captions=captions,
        cell=cell,
        title=title,
    )


def _attack_grid(results, targets, current, concept):
    """One row per prompt: the original model's image (the attack's target) and the attacked model's image of
    the adversarial prompt, with the judge's verdict; the running prompt last."""
    from studio.images import make_grid

    rows = [(r.prompt, t, r.image, r.success, r.adversarial_prompt) for r, t in zip(results, targets)]
    if current.get("target") is not None:
        rows.append(
            (current.get("prompt", ""), current["target"], current.get("image"), current.get("ok"), current.get("adv", "") + " (running)")
        )
    if not rows:
        return None
    images, labels, captions = [], [], []
    for prompt, target, image, ok, adv in rows:
        images += [target, image]
        if adv and adv != prompt:
            labels.append(f"{prompt}  |  attack: {adv}")
        else:
            labels.append(f"{prompt}  |  shown without an attack" if ok else prompt)
        captions += ["", "" if image is None else f"{concept}: {'yes' if ok else 'no'}"]
    cell = 128 if max(rows[0][1].size) <= 64 else 192
    return make_grid(images, len(rows), 2, row_labels=labels, col_labels=["target (original)", "attacked"], captions=captions, cell=cell)


def _attack_table(results):
    import pandas as pd

    rows = [[r.prompt, r.adversarial_prompt, "yes" if r.pre_success else "no", "yes" if r.success else "no", r.unet_evals] for r in results]
    return pd.DataFrame(rows, columns=["prompt", "adversarial prompt", "shown before", "shown after", "UNet evals"])


def _asr_text(results, attack, label) -> str:
    from erasers.attacks import asr

    a = asr(results)
    return (f"**Attack success rate {a['asr']:.0%}** over {a['n']} prompt(s) ({attack} on {html.escape(label)}); "
            f"{a['pre_successes']} showed the concept without any attack (pre-attack rate {a['pre_asr']:.0%}), "
            f"{a['post_successes']} more after the attack.")  # fmt: skip


def _export_fn():
    """`erasers.export.export_from_erased(erased_folder, out_folder)` when this version has it, else None."""
    try:
        from erasers.export import export_from_erased
    except ImportError:
        return None
    return export_from_erased


def theme():
    return gr.themes.Soft(primary_hue="indigo", neutral_hue="slate", font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])  # fmt: skip


def build_app(outputs="outputs", model: str = "toy", **kwargs) -> gr.Blocks:
    """The app's `gr.Blocks` (queued); launch it with `demo.launch(**launch_kwargs())`."""
    return Studio(outputs, model, **kwargs).build()


def launch_kwargs(host: str = "127.0.0.1", port: int | None = None, **extra) -> dict:
    """Local-only, no share link, our theme and CSS, no files served beyond Gradio's own cache."""
    return dict(server_name=host, server_port=port, share=False, show_error=True, quiet=True, theme=theme(), css=CSS, allowed_paths=[],
                max_file_size="50mb", ssr_mode=False, footer_links=["api"], **extra)  # fmt: skip
