"""The Probe tab: a revival probe from `probes.PROBES` against an erased model, beside the oracle (the
toy model retrained without the concept, found in assets/toy-oracle-CONCEPT) and the original; the
probe report's tables (every rate with its count and Wilson interval), the revival curve of
relearning, and each model's grid (reconstructions, completions, what is drawn instead)."""

from dataclasses import dataclass

import gradio as gr

import probes
from studio.sampling import Cancelled

from ..runner import Job
from ..shared import ORIGINAL
from ..ui import friendly, idle, progress, status, streamed
from .common import Picked

PICKER = "the original itself (no erasure)"
LABELS = {
    "relearning": "relearning (fine-tune on k renders)",
    "inversion": "inversion (DDIM / null-text reconstruction)",
    "completion": "diffusion completion (noised renders finished)",
    "inpainting": "inpainting (half a render masked)",
    "distance": "distance to the oracle (KID, judged distribution)",
}


@dataclass
class ProbeForm(Picked):
    erased: str = ORIGINAL
    concept: str = "triangle"
    probe: str = "completion"
    budget: str = "small"
    k: int = 4  # relearning: images of the concept
    with_oracle: bool = True
    with_original: bool = True


def component_of(studio, choice: str, state: dict) -> str:
    """What relearning fine-tunes for a picked model: what its eraser changed (cross-attention for the original)."""
    from probes.relearning import DEFAULT_COMPONENT, component_for, method_component

    from ..shared import ENCODER, SAVED, SESSION

    choice = (choice or ORIGINAL).strip()
    if choice.startswith(SESSION):
        entry = state["erased"].get(choice.split(":", 1)[1]) or {}
        try:
            return method_component(entry.get("method"), getattr(entry.get("result"), "config", None))
        except ValueError:
            return DEFAULT_COMPONENT
    if choice.startswith(SAVED):
        return component_for(studio.under(choice[len(SAVED) :]))
    if choice.startswith(ENCODER):
        return "text-encoder"
    return DEFAULT_COMPONENT


class ProbeTab:
    name, title = "probe", "Probe"
    outputs = ("status", "report", "curve", "grids")

    def __init__(self, studio):
        self.studio = studio

    def layout(self) -> dict:
        f, c = ProbeForm(), {}
        with gr.Row():
            with gr.Column(scale=2):
                c["erased"] = gr.Dropdown(
                    self.studio.tab_choices({"erased": {}}, PICKER),
                    value=f.erased,
                    label="Model to probe",
                    allow_custom_value=True,
                    elem_id="probe-model",
                    info="an erased model; the original is the model picked at the top",
                )
                c["concept"] = gr.Textbox(f.concept, label="Erased toy concept", elem_id="probe-concept", info="a shape, colour or style")
                c["probe"] = gr.Dropdown(
                    [(LABELS.get(p, p), p) for p in probes.PROBES], value=f.probe, label="Probe", elem_id="probe-probe"
                )
                with gr.Row():
                    c["budget"] = gr.Dropdown(list(probes.BUDGETS), value=f.budget, label="Budget", info="small: a minute or two on a CPU")
                    c["k"] = gr.Number(f.k, label="Relearning images (k)", elem_id="probe-k")
                with gr.Row():
                    c["with_oracle"] = gr.Checkbox(f.with_oracle, label="beside the oracle (retrained without the concept)")
                    c["with_original"] = gr.Checkbox(f.with_original, label="beside the original")
                with gr.Row():
                    c["run"] = gr.Button("Probe", variant="primary", elem_id="probe-run")
                    c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="probe-cancel")
            with gr.Column(scale=3):
                c["status"] = gr.HTML(
                    idle("Pick an erased model and a probe, then press Probe."), label="Probe status", elem_id="probe-status"
                )
                c["report"] = gr.Markdown("", label="Probe report", elem_id="probe-report")
                c["curve"] = gr.LinePlot(
                    x="step",
                    y="rate",
                    color="series",
                    title="Revival: judged concept rate while relearning",
                    height=220,
                    label="Revival curve",
                    show_label=False,
                    x_axis_format="d",
                    visible=False,
                    elem_id="probe-curve",
                )
                c["grids"] = gr.Gallery(label="What each model drew", columns=1, height="auto", format="png", elem_id="probe-grids")
        return c

    def wire(self, page, light: dict, compute: dict) -> None:
        c = page.tab(self.name)
        outputs = page.outputs(self.name, self.outputs)
        c["run"].click(
            streamed(self.run, outputs, ProbeForm),
            [page["state"]],
            list(outputs.values()),
            inputs_kwargs=page.form_inputs(self.name, ProbeForm),
            api_name="probe",
            **compute,
        )
        c["cancel"].click(self.studio.canceller("probe"), None, None, api_name="cancel_probe", **light)

        def refresh(state):
            return gr.update(choices=self.studio.tab_choices(state or {"erased": {}}, PICKER))

        page.demo.load(friendly(refresh), [page["state"]], [c["erased"]], api_visibility="private", **light)
        c["erased"].focus(friendly(refresh), [page["state"]], [c["erased"]], api_visibility="private", **light)

    def plan(self, form, state) -> tuple:
        """(concept, probe, config, models to load as [(label, loader)], component); bad input fails here, before any work."""
        from probes.common import erasable_concept
        from studio.toyworld.oracle import oracle_path

        from ..ui import as_int

        concept = erasable_concept((form.concept or "").strip() or "triangle").name
        if form.probe not in probes.PROBES:
            raise ValueError(f"unknown probe {form.probe!r}; pick one of {', '.join(probes.PROBES)}")
        component = component_of(self.studio, form.erased, state) if form.probe == "relearning" else None
        extra = {"images": as_int(form.k, "relearning images (k)", 1), "component": component} if component else None
        config = probes.get_config(form.probe, extra, budget=form.budget)  # an unknown budget fails here
        models = [
            (
                "erased" if (form.erased or ORIGINAL) != ORIGINAL else "original",
                lambda: self.studio.resolve(form.erased, form.model, form.text_encoder, state),
            )
        ]
        note = ""
        if form.with_oracle:
            path = oracle_path(concept)
            if (path / "oracle.json").is_file():
                models.append(("oracle", lambda: (self.studio.store.get(str(path)), f"oracle without {concept}")))
            else:
                note = f" No oracle is shipped for {concept} (train one with `studio toyworld train --without {concept} --install`)."
        if form.with_original and models[0][0] != "original":
            models.append(("original", lambda: self.studio.resolve(ORIGINAL, form.model, form.text_encoder, state)))
        return concept, form.probe, config, models, component, note

    def run(self, form, state, session):
        concept, name, config, models, component, note = self.plan(form, state)
        yield {"status": status(0, 1, "Loading the models ..."), "report": "", "curve": gr.update(value=None, visible=False), "grids": []}
        loaded = [(label, *load()) for label, load in models]  # (label, pipe, description)
        judge = self.studio.judge("toy")

        def work(emit, cancel):
            from probes.report import probe_key

            key = probe_key(name, config)
            report = {"concept": concept, "budget": form.budget, "models": {}}
            for label, pipe, shown in loaded:
                report["models"][label] = {"path": shown, "component": component, "results": {}}
            if name == "distance":
                (label, pipe, _), refs = loaded[0], {lab: p for lab, p, _ in loaded[1:]}
                result = probes.run_probe(
                    name,
                    pipe,
                    concept,
                    config,
                    judge=judge,
                    label=label,
                    references=refs,
                    callback=lambda e: emit(("event", 0, e)),
                    cancel=cancel,
                )
                report["models"][label]["results"][key] = result.as_dict()
                emit(("result", label, result))
                return report
            for i, (label, pipe, _) in enumerate(loaded):
                result = probes.run_probe(
                    name, pipe, concept, config, judge=judge, callback=lambda e, i=i: emit(("event", i, e)), cancel=cancel
                )
                report["models"][label]["results"][key] = result.as_dict()
                emit(("result", label, result))
            return report

        with self.studio.cancels.running(session, "probe") as cancel:
            yield from self.stream(Job(work, cancel, name="studio-probe"), name, loaded, note)

    def stream(self, job, name, loaded, note):
        from probes.report import add_comparisons, format_report

        parts = 1 if name == "distance" else len(loaded)
        done, latest, grids, curves = 0, None, [], []
        title = f"{name} on {', '.join(label for label, _, _ in loaded)}"
        try:
            for batch in job.stream():
                for kind, who, payload in batch:
                    if kind == "event":
                        latest = payload
                    else:
                        done, latest = done + 1, None
                        grid = payload.grid(title=f"{who}: {name} / {payload.concept}")
                        if grid is not None:
                            grids.append((grid, who))
                        curves += [(p["step"], p["rate"]["rate"], who) for p in payload.measurements.get("curve", [])]
                upd = {"status": progress(title, latest, job.seconds, part=(done, parts))}
                if batch and any(kind == "result" for kind, _, _ in batch):
                    upd["grids"] = list(grids)
                    if curves:
                        upd["curve"] = gr.update(value=curve_frame(curves), visible=True)
                yield upd
            report = job.result
        except Cancelled:
            yield {"status": status(done, parts, f"Cancelled after {done} of {parts} model(s).", "cancelled")}
            return
        add_comparisons(report)
        text = format_report(report).replace("# Revival probes", "### Revival probes", 1)
        yield {
            "status": status(1, 1, f"{title}: done in {job.seconds:.0f} s.{note}", "done"),
            "report": text + ("\n" + note.strip() if note else ""),
            "grids": list(grids),
        }


def curve_frame(points: list):
    import pandas as pd

    return pd.DataFrame(points, columns=["step", "rate", "series"])


__all__ = ["LABELS", "ProbeForm", "ProbeTab", "component_of"]
