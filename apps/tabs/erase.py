"""The Erase tab: pick a concept and a method, watch the loss and previews (and, with "Stop when erased", the
concept's rate on held-in check prompts beside the loss), see before / after on fixed seeds and the robustness report; then save the erased model or export its plug-in text encoder
(`erase_results.py`). Methods and their settings come from `erasers.METHODS` and their config
dataclasses; attacks and judges from their registries."""

import dataclasses
import html
import json
import typing
import uuid
from dataclasses import asdict, dataclass

import gradio as gr

from erasers import EVAL_BUDGETS, METHODS, PRESETS, get_config
from erasers.attacks import ATTACKS, UnlearnDiffAtkConfig
from erasers.evaluate import EvalConfig
from studio.judges import JUDGES
from studio.loading import is_toy
from studio.sampling import Cancelled, check_prompt

from ..runner import Job
from ..shared import SESSION, sample
from ..ui import as_event, as_float, as_int, as_setting, friendly, lines, loss_frame, progress, show, status, streamed
from . import erase_results
from .common import ATTACK_LABELS, Picked, judge_concept


METHOD_INFO = {
    "esd-x": "ESD-x: fine-tunes the UNet's cross-attention. For styles and specific concepts.",
    "esd-u": "ESD-u: fine-tunes the UNet outside cross-attention. For objects and global concepts (nudity).",
    "esd-x-strict": "ESD-x-strict: only the cross-attention keys and values.",
    "esd-all": "ESD-all: every Linear and Conv layer of the UNet.",
    "advunlearn": "AdvUnlearn: adversarial training of the text encoder; exports as a plug-in text encoder.",
    "doco": "DoCo: concept domain correction with a discriminator, plus gradient surgery to keep other concepts. "
    "Needs an anchor, e.g. 'a square'.",
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
CHOICES = {"attack_method": ("fast_at", "pgd"), "surgery": ("official", "pcgrad", "none")}  # fields shown as dropdowns
_EV, _UA = EvalConfig(), UnlearnDiffAtkConfig()


@dataclass
class EraseBase(Picked):
    concept_text: str = "a triangle"
    anchor_text: str = ""
    retain_text: str = ""
    method: str = next(iter(METHODS))
    preset: str = "official"
    more_json: str = ""
    evaluate_on: bool = True
    judge_name: str = "toy"
    ev_seeds: int = _EV.seeds
    ev_prompts: int = _EV.prompts_per_form
    attack: str = _EV.attack
    attack_prompts: int = _EV.attack_prompts
    attack_iters: int = _UA.iterations
    attack_timesteps: int = _UA.num_timesteps
    sample_steps: int = _EV.num_inference_steps
    guidance: float = _EV.guidance_scale
    preview_every: int = 20
    stop_on: bool = False  # erase until erased (erasers.stopping)
    stop_rate: float = 0.05
    stop_retained: float = 0.9
    stop_every: int = 10


def toy_defaults(form):
    """The form a user of the toy model starts from: the toy-world preset and the toy evaluation
    budget (`erasers.EVAL_BUDGETS["toy"]`), which fit a CPU; the paper defaults are one click away."""
    budget = EVAL_BUDGETS["toy"]
    form.preset = "toy"
    form.ev_seeds, form.ev_prompts, form.attack_prompts = budget["seeds"], budget["prompts_per_form"], budget["attack_prompts"]
    attack = budget["attack_overrides"]
    form.attack_iters = attack.get("iterations", form.attack_iters)
    form.attack_timesteps = len(attack["timesteps"]) if "timesteps" in attack else form.attack_timesteps
    return form


# the method's main settings, None: the preset's value
EraseForm = dataclasses.make_dataclass("EraseForm", [(name, typing.Any, None) for name in MAIN_FIELDS], bases=(EraseBase,))


def method_info(method: str) -> str:
    if method in METHOD_INFO:
        return METHOD_INFO[method]
    doc = (get_config(method).__doc__ or "").strip().splitlines()
    return f"{method}: {doc[0]}" if doc else method


def settings(method, preset):
    """The method's settings for the page: its description, the main fields and 'More settings' (JSON)."""
    values = asdict(get_config(method, preset))
    updates = [gr.update(value=values[n], visible=True) if n in values else gr.update(visible=False) for n in MAIN_FIELDS]
    more = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k not in MAIN_FIELDS and k not in HIDDEN_FIELDS}
    return [gr.update(value=method_info(method)), *updates, gr.update(value=json.dumps(more, indent=1))]


def config_of(form):
    """The method's config: the preset, then the fields given (None: keep the preset's), then 'More settings',
    every value checked against its field's type first."""
    if form.method not in METHODS:
        raise ValueError(f"unknown erasure method {form.method!r}; choose one of {', '.join(METHODS)}")
    try:
        more = json.loads(form.more_json) if (form.more_json or "").strip() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"'More settings' is not valid JSON ({e.msg} at line {e.lineno}); fix it or clear the box") from None
    if not isinstance(more, dict):
        raise ValueError("'More settings' must be a JSON object like {\"seed\": 0}")
    base = get_config(form.method, form.preset)
    kinds = typing.get_type_hints(type(base))
    given = {n: getattr(form, n) for n in MAIN_FIELDS if n in kinds and getattr(form, n) not in (None, "")}
    overrides = {n: as_setting(kinds[n], v, MAIN_FIELDS[n][0]) for n, v in given.items()}
    unknown = sorted(set(more) - set(kinds))
    if unknown:
        raise ValueError(f"{form.method} has no setting {', '.join(unknown)}; its settings are: {', '.join(sorted(kinds))}")
    overrides.update({k: as_setting(kinds[k], v, k) for k, v in more.items()})
    return get_config(form.method, form.preset, overrides)


class EraseTab:
    name, title = "erase", "Erase"
    outputs = (
        "status",
        "plot",
        "preview",
        "preview_cap",
        "grid",
        "table",
        "report",
        "state",
        "save",
        "export",
        "info",
        "download",
        "attack.victim",
        "edit.choice",
        "generate.compare",
        "model",
        "encoder",
        "attack.concept",
        "attack.prompts_text",
    )

    def __init__(self, studio):
        self.studio = studio

    # ------------------------------------------------------------------ the page

    def layout(self) -> dict:
        f, c = toy_defaults(EraseForm()) if is_toy(self.studio.default_model) else EraseForm(), {}
        with gr.Row():
            with gr.Column(scale=2):
                c["concept_text"] = gr.Textbox(
                    f.concept_text,
                    label="Concept to erase",
                    lines=2,
                    elem_id="erase-concept",
                    info="one prompt per line (e.g. the concept and its synonyms)",
                )
                with gr.Row():
                    c["anchor_text"] = gr.Textbox(
                        f.anchor_text, label="Anchor (optional)", lines=1, info="what it should become (DoCo needs one)"
                    )
                    c["retain_text"] = gr.Textbox(
                        f.retain_text, label="Retain prompts (optional)", lines=1, info="one per line; kept unchanged"
                    )
                with gr.Row():
                    c["method"] = gr.Dropdown(list(METHODS), value=f.method, label="Method", scale=2, elem_id="erase-method")
                    labels = {"official": "paper defaults", "toy": "toy-world preset"}
                    c["preset"] = gr.Radio(
                        [(labels.get(p, p), p) for p in PRESETS], value=f.preset, label="Settings", scale=2, elem_id="erase-preset"
                    )
                c["method_info"] = gr.Markdown(method_info(f.method), elem_id="erase-method-info")
                with gr.Group(), gr.Row():
                    for name, (label, info) in MAIN_FIELDS.items():
                        kw = dict(label=label, info=info, visible=False, min_width=140, elem_id=f"erase-{name}")
                        if name in CHOICES:
                            c[name] = gr.Dropdown(list(CHOICES[name]), value=None, **kw)
                        elif name == "train_layers":
                            c[name] = gr.Textbox(**kw)
                        else:
                            c[name] = gr.Number(**kw)
                with gr.Accordion("More settings (JSON)", open=False):
                    c["more_json"] = gr.Code(
                        f.more_json, language="json", label="Other fields of the method's config", lines=6, elem_id="erase-more"
                    )
                self.stop_layout(f, c)
                self.evaluation_layout(f, c)
                with gr.Row():
                    c["run"] = gr.Button("Erase", variant="primary", elem_id="erase-run")
                    c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="erase-cancel")
            with gr.Column(scale=3):
                erase_results.layout(c)
        return c

    def stop_layout(self, f, c) -> None:
        with gr.Accordion("Stop when erased", open=False, elem_id="erase-stop"), gr.Row():
            c["stop_on"] = gr.Checkbox(
                f.stop_on,
                label="Stop when erased",
                info="judge held-in check prompts every N steps; the iterations are the ceiling",
                elem_id="erase-stop-on",
            )
            c["stop_rate"] = gr.Number(
                f.stop_rate,
                label="Target rate",
                info="share of check images that may still show it",
                min_width=100,
                elem_id="erase-stop-rate",
            )
            c["stop_retained"] = gr.Number(
                f.stop_retained,
                label="Keep utility",
                info="x the original's retained accuracy (0: no guard)",
                min_width=100,
                elem_id="erase-stop-retained",
            )
            c["stop_every"] = gr.Number(f.stop_every, label="Check every (steps)", min_width=100, elem_id="erase-stop-every")

    def evaluation_layout(self, f, c) -> None:
        with gr.Accordion("Evaluation after erasing", open=False, elem_id="erase-eval"):
            with gr.Row():
                c["evaluate_on"] = gr.Checkbox(
                    f.evaluate_on, label="Evaluate", info="erasure, utility and attack success rate", elem_id="erase-evaluate"
                )
                c["judge_name"] = gr.Dropdown(list(JUDGES), value=f.judge_name, label="Judge", elem_id="erase-judge")
            with gr.Row():
                c["ev_seeds"] = gr.Number(f.ev_seeds, label="Seeds per prompt", min_width=100, elem_id="erase-ev-seeds")
                c["ev_prompts"] = gr.Number(f.ev_prompts, label="Prompts per form", min_width=100, elem_id="erase-ev-prompts")
                c["attack_prompts"] = gr.Number(f.attack_prompts, label="Attack prompts", min_width=100, elem_id="erase-attack-prompts")
            with gr.Row():
                attacks = [(ATTACK_LABELS.get(a, (a, a))[1], a) for a in ATTACKS]
                c["attack"] = gr.Dropdown(attacks, value=f.attack, label="Attack", min_width=150, scale=2, elem_id="erase-attack")
                c["attack_timesteps"] = gr.Number(
                    f.attack_timesteps, label="Attack timesteps", min_width=100, elem_id="erase-attack-timesteps"
                )
                c["attack_iters"] = gr.Number(f.attack_iters, label="Steps per timestep", min_width=100, elem_id="erase-attack-iters")
        with gr.Row():
            c["sample_steps"] = gr.Number(
                f.sample_steps, label="Sampling steps", info="images, previews, evaluation", elem_id="erase-sample-steps"
            )
            c["guidance"] = gr.Number(f.guidance, label="Guidance scale", elem_id="erase-guidance")
            c["preview_every"] = gr.Number(
                f.preview_every, label="Preview every (steps)", info="0 = no previews", elem_id="erase-preview-every"
            )

    def wire(self, page, light: dict, compute: dict) -> None:
        c = page.tab(self.name)
        outputs = page.outputs(self.name, self.outputs)
        settings_out = [c["method_info"], *(c[n] for n in MAIN_FIELDS), c["more_json"]]
        settings_fn = friendly(settings)
        c["method"].change(settings_fn, [c["method"], c["preset"]], settings_out, api_name="erase_settings", **light)
        c["preset"].change(settings_fn, [c["method"], c["preset"]], settings_out, api_visibility="private", **light)
        page.demo.load(settings_fn, [c["method"], c["preset"]], settings_out, api_visibility="private", **light)
        inputs = page.form_inputs(self.name, EraseForm)
        c["run"].click(
            streamed(self.run, outputs, EraseForm),
            [page["state"]],
            list(outputs.values()),
            inputs_kwargs=inputs,
            api_name="erase",
            **compute,
        )
        c["cancel"].click(self.studio.canceller("erase"), None, None, api_name="cancel_erase", **light)
        save, export = (streamed(fn, outputs) for fn in (self.save_model, self.export_encoder))
        c["save"].click(save, [page["state"]], list(outputs.values()), api_name="save_model", **compute)
        c["export"].click(export, [page["state"]], list(outputs.values()), api_name="export_encoder", **compute)

    # ------------------------------------------------------------------ the handlers

    def run(self, form, state, session):
        from erasers import Concept, erase

        prompts = lines(form.concept_text)
        if not prompts:
            raise ValueError("type the concept to erase first, e.g. 'a triangle' (one prompt per line)")
        config = config_of(form)
        steps, guidance = as_int(form.sample_steps, "sampling steps", 1), as_float(form.guidance, "guidance")
        preview_every = as_int(form.preview_every or 0, "preview every", 0)
        ecfg = erase_results.eval_config(form, steps, guidance) if form.evaluate_on else None
        concept = Concept(prompts, anchors=lines(form.anchor_text), retain=lines(form.retain_text))
        stop_when = stop_of(form, concept, self.studio.spec(form.model))
        yield {
            "status": status(0, 1, f"Loading {form.model or self.studio.default_model} ..."),
            "preview": None,
            "info": "",
            "table": "",
            "preview_cap": "**Preview** of the model being erased",
            "grid": gr.update(value=None, visible=False),
            "plot": None,
            "report": gr.update(value=None, visible=False),
            "save": gr.update(interactive=False),
            "export": gr.update(interactive=False),
            "download": None,
        }
        pipe = self.studio.load(form.model, form.text_encoder, copy=True)
        for p in concept.prompts + concept.anchors + concept.retain:
            check_prompt(pipe.tokenizer, p)
        with self.studio.cancels.running(session, "erase") as cancel:

            def work(emit, cancel):
                def callback(info):
                    ev = as_event(info, form.method)
                    emit(ev)
                    step, training = ev["step"], "loss" in ev or ev["stage"] == form.method
                    if training and preview_every and (step % preview_every == 0 or step == ev["total"]):
                        emit({"preview": sample(pipe, [prompts[0]], [0], steps, guidance, cancel)[0], "step": step})

                return erase(
                    pipe, concept, form.method, config=config, callback=callback, cancel=cancel, progress=False, stop_when=stop_when
                )

            job = Job(work, cancel, name="studio-erase")
            steps_done, losses, latest, checks = [], [], None, []
            try:
                for events in job.stream():
                    upd = {}
                    for ev in events:
                        if "preview" in ev:
                            upd["preview"] = gr.update(value=show(ev["preview"]), label=f"Preview after step {ev['step']}")
                            upd["preview_cap"] = f"**Preview**: {html.escape(prompts[0])}, seed 0, after step {ev['step']}"
                            continue
                        if "check_rate" in ev:  # a stop-rule check: the live rate, drawn beside the loss
                            checks.append(ev)
                            continue
                        latest = ev
                        if "loss" in ev:
                            steps_done.append(ev["step"])
                            losses.append(ev["loss"])
                    upd["status"] = progress("Erasing", latest, job.seconds, note=check_note(checks))
                    if events and (steps_done or checks):
                        upd["plot"] = plot_frame(steps_done, losses, checks)
                    yield upd
                result = job.result
            except Cancelled:
                done = steps_done[-1] if steps_done else 0
                total = (latest or {}).get("total") or getattr(config, "iterations", None) or max(done, 1)
                yield {"status": status(done, total, f"Cancelled at step {done} of {total}; nothing was kept.", "cancelled")}
                return
            yield from self.after(form, state, result, pipe, prompts, steps, guidance, ecfg, cancel)

    def after(self, form, state, result, pipe, prompts, steps, guidance, ecfg, cancel):
        """Keep the result in this session, then show before / after and (optionally) the robustness report."""
        key, name = uuid.uuid4().hex[:8], result.concept.name
        name = name if len(name) <= 40 else name[:37] + "..."
        concept = judge_concept(prompts, form.judge_name)
        state["erased"][key] = {
            "label": f"erased: {name} · {form.method}",
            "base": self.studio.spec(form.model),
            "folder": None,
            "text_encoder": self.studio.encoder(form.text_encoder) or "",
            "result": result,
            "concept": concept,
            "method": form.method,
            "prompt": prompts[0],
        }
        state["last"] = key
        self.studio.store.put_erased(key, pipe)
        stats = result.stats
        summary = (
            f"{form.method}: {stats.get('steps')} steps in {stats.get('seconds', 0):.0f} s, final loss {stats.get('final_loss') or 0:.4g}, "
            f"{stats.get('unet_evals', 0):,} UNet evaluations."
        )
        if stats.get("stop"):
            from erasers.stopping import report_lines

            summary += " " + " ".join(report_lines(stats["stop"])[1:])
        can_export = result.component == "text_encoder"
        label = "Export plug-in text encoder" if can_export else f"No text encoder to export ({form.method} changes the UNet)"
        yield {
            "status": status(1, 1, summary + " Drawing the before/after grid ...", "running"),
            "state": state,
            "save": gr.update(interactive=True),
            "export": gr.update(interactive=can_export, value=label),
            **self.studio.choice_updates(state, select=f"{SESSION}{key}"),
        }
        original = self.studio.load(form.model, form.text_encoder)
        try:
            grid = erase_results.before_after(
                self.studio, original, pipe, prompts[:3], [0, 1, 2, 3], steps, guidance, form.judge_name, concept, cancel
            )
        except Cancelled:
            yield {"status": status(1, 1, f"{summary} Cancelled; the erased model is kept in this session.", "cancelled")}
            return
        yield {"grid": gr.update(value=grid, visible=True)}
        if not form.evaluate_on:
            yield {"status": status(1, 1, summary, "done"), "table": "*Evaluation was switched off.*"}
            return
        if concept is None:
            yield {
                "status": status(1, 1, summary, "done"),
                "table": f"*No evaluation: the {form.judge_name} judge cannot tell whether an image shows '{html.escape(prompts[0])}'. "
                "On the toy model, name a toy-world concept (a shape, colour or fill style).*",
            }
            return
        yield from erase_results.evaluation(self.studio, form, ecfg, cancel, original, pipe, concept, summary)

    def save_model(self, form, state, session):
        key = state.get("last")
        if key is None or key not in state["erased"]:
            raise ValueError("erase a concept first; then you can save the erased model")
        folder = erase_results.save(self.studio, key, state["erased"][key])
        rel = self.studio.rel(folder)
        yield {
            "info": f"Saved to `{rel}` in the output folder. It is listed in the model pickers; `load_pipeline('<outputs>/{rel}')` loads it.",
            "state": state,
            **self.studio.choice_updates(state),
        }

    def export_encoder(self, form, state, session):
        key = state.get("last")
        if key is None or key not in state["erased"]:
            raise ValueError("erase a concept with AdvUnlearn first; then you can export its text encoder")
        out, archive = erase_results.export(self.studio, key, state["erased"][key])
        rel = self.studio.rel(out)
        yield {
            "download": gr.update(value=str(archive), visible=True),
            "state": state,
            "info": f"Plug-in text encoder written to `{rel}` in the output folder (and offered as a zip below). Use it with "
            f"`load_pipeline(base, text_encoder='<outputs>/{rel}')` or `CLIPTextModel.from_pretrained`.",
            **self.studio.choice_updates(state),
        }


# ---------------------------------------------------------------- stop when erased


def stop_of(form, concept, model_spec: str):
    """The form's stop rule (an `erasers.stopping.StopWhen`), or None when "Stop when erased" is off."""
    if not form.stop_on:
        return None
    from erasers.stopping import check_method, stop_when_for

    check_method(form.method)
    guard = as_float(form.stop_retained, "keep utility")
    return stop_when_for(
        is_toy(model_spec),
        concept,
        as_float(form.stop_rate, "target rate"),
        None if guard == 0 else guard,
        as_int(form.stop_every, "check every", 1),
        judge=form.judge_name,
    )


def check_note(checks: list) -> str:
    """The latest check, for the status line: ' · check at step 20: concept shown 6% (1/16) [1, 28], retained 0.97'."""
    if not checks:
        return ""
    from studio.stats import format_rate

    c = checks[-1]
    text = f" · check at step {c['step']}: concept shown {format_rate(c['check_shown'], c['check_n'])}"
    if "check_retained_ratio" in c:
        text += f", retained {c['check_retained_ratio']:.2f} of the original's"
    if c.get("check_stopped"):
        text += f" · stopped: {c['check_stopped']}"
    return text


def plot_frame(steps: list, losses: list, checks: list):
    """The loss curve, and with a stop rule the checks' concept rate and retained ratio as two more series."""
    import pandas as pd

    frame = loss_frame(steps, losses) if steps else None
    if not checks:
        return frame
    rows = [{"step": c["step"], "loss": c["check_rate"], "series": "concept shown (check)"} for c in checks]
    rows += [
        {"step": c["step"], "loss": c["check_retained_ratio"], "series": "retained ratio (check)"}
        for c in checks
        if "check_retained_ratio" in c
    ]
    frame = pd.concat([f for f in (frame, pd.DataFrame(rows)) if f is not None], ignore_index=True)
    return gr.update(value=frame, color="series")
