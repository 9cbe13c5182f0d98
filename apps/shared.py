"""The app's server-side state shared by every tab: loaded models and judges, the output folder and
what it holds, the model pickers, which model paths a remote user may load, and cancel events.

Choices never carry absolute server paths: a saved model is `saved:models/<name>` and a plug-in
encoder `encoder:encoders/<name>`, relative to the output folder.
"""

import html
import ipaddress
import json
import os
import time
from pathlib import Path

import gradio as gr

from studio.paths import inside

from .runner import Cancels, ModelStore
from .ui import session_of


ORIGINAL = "original"  # the value of "the model picked at the top" in the tab-level model pickers
SAVED, ENCODER, SESSION = "saved:", "encoder:", "session:"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# the pickers of the tabs and their first entry; the names are those of the page's components
PICKERS = {
    "attack.victim": "the original itself (no erasure)",
    "edit.choice": "the model picked above (original)",
    "generate.compare": "none (only the model above)",
}


def is_loopback(host: str | None) -> bool:
    if host in (None, "", *LOOPBACK):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no")


def hf_cache() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:
        return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


class Studio:
    """Models, judges, output folders and cancel events; every tab gets the one instance.

    `host` is where the app listens: on anything but loopback, model paths must stay inside the
    output folder, the Hugging Face cache or an `allow_roots` folder, and refused paths all get the
    same answer (a remote user learns nothing about the server's files)."""

    def __init__(
        self,
        outputs="outputs",
        model: str = "toy",
        device=None,
        dtype=None,
        judge_path=None,
        concurrency: int = 1,
        host: str = "127.0.0.1",
        allow_roots=(),
    ):
        self.outputs = Path(outputs).expanduser().resolve()
        self.default_model = str(model)
        self.store = ModelStore(device=device, dtype=dtype)
        self.cancels = Cancels()
        self.judge_path = judge_path
        self.concurrency = concurrency
        self.restricted = not is_loopback(host)
        self.roots = [self.outputs, hf_cache(), *(Path(r).expanduser().resolve() for r in allow_roots)]
        self._judges: dict = {}

    # ------------------------------------------------------------------ judges, folders

    def judge(self, name: str = "toy"):
        from studio.judges import get_judge

        if name not in self._judges:
            kwargs = {"path": self.judge_path} if name == "toy" and self.judge_path else {}
            self._judges[name] = get_judge(name, **kwargs)
        return self._judges[name]

    def rel(self, path) -> str:
        """A path as the page shows it: relative to the output folder when inside it."""
        path = Path(path).resolve()
        return str(path.relative_to(self.outputs)) if path.is_relative_to(self.outputs) else path.name

    def scan(self) -> tuple[list, list]:
        """Erased model folders (with erasure.json) and plug-in text encoders under the output folder, as (label, relative path)."""
        from studio.loading import ERASURE_FILE

        erased, encoders = [], []
        if not self.outputs.is_dir():
            return erased, encoders
        for depth in range(1, 5):
            for p in sorted(self.outputs.glob("/".join(["*"] * depth))):
                if not p.is_dir() or p.name.endswith(".tmp"):
                    continue
                if (p / ERASURE_FILE).is_file():
                    erased.append((self.erased_label(p), self.rel(p)))
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
                        encoders.append((self.rel(p), self.rel(p)))
        return erased, encoders

    def erased_label(self, folder: Path) -> str:
        from studio.loading import ERASURE_FILE

        try:
            info = json.loads((folder / ERASURE_FILE).read_text())
            what = f"{info.get('concept', {}).get('name') or '?'} · {info.get('method', '?')}"
        except (OSError, json.JSONDecodeError, AttributeError):
            what = "?"
        return f"erased: {what} ({self.rel(folder)})"

    # ------------------------------------------------------------------ pickers

    def model_choices(self) -> list:
        erased, _ = self.scan()
        base = [("toy model (shipped)", "toy")]
        if self.default_model != "toy":
            base.insert(0, (self.default_model, self.default_model))
        return base + [(label, SAVED + rel) for label, rel in erased]

    def encoder_choices(self) -> list:
        _, encoders = self.scan()
        return [("none (the model's own)", "")] + [(label, ENCODER + rel) for label, rel in encoders]

    def tab_choices(self, state: dict, first: str = PICKERS["edit.choice"]) -> list:
        erased, encoders = self.scan()
        saved = {self.rel(e["folder"]) for e in state["erased"].values() if e.get("folder")}
        erased = [(label, SAVED + rel) for label, rel in erased if rel not in saved]  # listed once, as this session's
        session = [
            (f"{e['label']} (this session{', saved' if e.get('folder') else ', unsaved'})", f"{SESSION}{k}")
            for k, e in reversed(list(state["erased"].items()))
        ]
        plugins = [(f"original + plug-in encoder {label}", ENCODER + rel) for label, rel in encoders]
        return [(first, ORIGINAL)] + session + erased + plugins

    def choice_updates(self, state, select: str | None = None) -> dict:
        """New choices for every model picker (after an erasure, a save or an export); `select` picks a session's model."""
        upd = {name: gr.update(choices=self.tab_choices(state, first)) for name, first in PICKERS.items()}
        if select:
            for name in ("attack.victim", "generate.compare"):
                upd[name] = gr.update(choices=self.tab_choices(state, PICKERS[name]), value=select)
        upd["model"] = gr.update(choices=self.model_choices())
        upd["encoder"] = gr.update(choices=self.encoder_choices())
        entry = state["erased"].get(select.split(":", 1)[1]) if select else None
        if entry is not None and entry.get("concept"):
            upd["attack.concept"] = entry["concept"]
            upd["attack.prompts_text"] = entry["prompt"] if entry["concept"] in entry["prompt"] else f"a {entry['concept']}"
        return upd

    # ------------------------------------------------------------------ which models may load

    def spec(self, model: str | None) -> str:
        """The model spec to load for a value of the model field: 'toy', a hub id or a path (checked)."""
        from studio.loading import is_toy

        model = (model or "").strip() or self.default_model
        if model.startswith(SAVED):
            return str(self.under(model[len(SAVED) :]))
        if is_toy(model) or model == self.default_model:
            return model
        return self.allowed(model)

    def encoder(self, value: str | None) -> str | None:
        value = (value or "").strip()
        if not value:
            return None
        if value.startswith(ENCODER):
            return str(self.under(value[len(ENCODER) :]))
        return self.allowed(value)

    def under(self, name: str) -> Path:
        """A folder named relative to the output folder (a saved model, an exported encoder); nothing outside it."""
        try:
            return inside(self.outputs, name)
        except ValueError:
            raise ValueError(f"{name!r} is not a folder inside the output folder; pick a model from the list") from None

    def allowed(self, spec: str) -> str:
        """`spec` itself on loopback; elsewhere, a path must resolve inside an allowed root (one answer for
        every path that does not, existing or not) and a hub id passes (loaded from the cache or the hub)."""
        if not self.restricted:
            return spec
        path = Path(spec).expanduser()
        looks_like_hub_id = len(spec.split("/")) == 2 and not spec.startswith(("/", ".", "~")) and all(spec.split("/"))
        if looks_like_hub_id and not path.exists():
            return spec
        resolved = path.resolve() if path.is_absolute() else (Path.cwd() / path).resolve()
        if any(resolved == r or r in resolved.parents for r in self.roots):
            return str(resolved)
        raise ValueError(
            f"the app loads 'toy', hub ids and models inside its output folder, the Hugging Face cache or a folder given with "
            f"`studio app --allow-root`; {spec!r} is none of these"
        )

    def guard(self, spec: str, error: Exception) -> Exception:
        """On a remote-facing app, a failed load of anything but a known model says no more than a refused path."""
        if not self.restricted or spec == self.default_model or spec.startswith(str(self.outputs)):
            return error
        return ValueError(
            f"could not load {spec!r}: the app loads 'toy', hub ids (from the cache{'' if hub_offline() else ' or the hub'}) and models inside "
            "its output folder, the Hugging Face cache or a folder given with `studio app --allow-root`"
        )

    def load(self, model: str | None, text_encoder: str | None = None, copy: bool = False):
        """The pipeline of the model field's value (and the encoder field's), or a private copy to train."""
        spec, encoder = self.spec(model), self.encoder(text_encoder)
        try:
            return (self.store.copy if copy else self.store.get)(spec, encoder)
        except Exception as e:
            error = self.guard(spec if encoder is None else encoder, e)
            if error is e:
                raise
            raise error from None

    def resolve(self, choice: str, model: str, text_encoder: str, state: dict):
        """(pipeline, label) for a tab-level model choice."""
        shown = (model or "").strip() or self.default_model
        shown = shown[len(SAVED) :] if shown.startswith(SAVED) else shown
        choice = (choice or ORIGINAL).strip()
        if choice == ORIGINAL:
            enc = f" + encoder {Path(text_encoder.split(':', 1)[-1]).name}" if text_encoder else ""
            return self.load(model, text_encoder), f"original: {shown}{enc}"
        if choice.startswith(SESSION):
            key = choice.split(":", 1)[1]
            entry = state["erased"].get(key)
            if entry is None:
                raise ValueError(
                    "that erased model is not in this browser session (other sessions' models are private, and unsaved ones are lost "
                    "when the server restarts); erase again or pick a saved one"
                )
            return self.store.erased(key, entry), entry["label"]
        if choice.startswith(ENCODER):
            return self.load(model, choice), f"{shown} + plug-in encoder {Path(choice).name}"
        if choice.startswith(SAVED):
            return self.load(choice), self.erased_label(self.under(choice[len(SAVED) :]))
        return self.load(choice), choice

    # ------------------------------------------------------------------ page-load and small handlers

    def on_load(self, state):
        return [gr.update(choices=self.model_choices()), gr.update(choices=self.encoder_choices())] + [
            gr.update(choices=self.tab_choices(state, first)) for first in PICKERS.values()
        ]

    def check_model(self, model, text_encoder):
        from studio.latents import resolution as model_resolution

        t0 = time.time()
        pipe = self.load(model, text_encoder)
        n_unet = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
        n_te = sum(p.numel() for p in pipe.text_encoder.parameters()) / 1e6
        res = model_resolution(pipe)
        name = (model or "").strip() or self.default_model
        enc = f" with the plug-in encoder {html.escape(Path(text_encoder.split(':', 1)[-1]).name)}" if text_encoder else ""
        return (
            f"Loaded **{html.escape(name)}**{enc}: {res}x{res} px, UNet {n_unet:.1f} M and text encoder {n_te:.1f} M parameters, "
            f"on {pipe.device} in {str(pipe.unet.dtype).replace('torch.', '')} ({time.time() - t0:.1f} s)."
        )

    def canceller(self, kind: str):
        """The handler of a Cancel button: sets the cancel event of this session's running `kind` job."""

        def cancel(request: gr.Request):
            if self.cancels.cancel(session_of(request), kind):
                gr.Info("Cancelling: the job stops after its current step.")

        cancel.__name__ = f"cancel_{kind}"
        return cancel

    def on_unload(self, request: gr.Request):
        self.cancels.cancel(session_of(request))


def sample(pipe, prompts, seeds, steps, guidance, cancel=None) -> list:
    from studio.sampling import sample as draw

    return draw(pipe, prompts, seed=seeds, num_inference_steps=steps, guidance_scale=guidance, cancel=cancel).images


def decode(pipe, latents):
    import torch

    from studio.latents import decode, to_pil

    with torch.no_grad():
        return to_pil(decode(pipe, latents))[0]
