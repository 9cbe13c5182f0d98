"""The Edit tab: invert an uploaded image (or a sample) with an inverter of `inversion.METHODS` and edit
it by prompt-to-prompt; the input as the model sees it, the reconstruction, the edit and where local
blending let it change. Reweight and blend use `inversion.options`' syntax, as `studio edit` does."""

import html
from dataclasses import dataclass

import gradio as gr
import numpy as np
from PIL import Image

from inversion import METHODS, EditConfig, NullTextConfig
from inversion.editing import TARGET_NULLS
from inversion.options import parse_blend, parse_reweight
from studio.paths import SAMPLES
from studio.sampling import Cancelled

from ..runner import Job
from ..shared import ORIGINAL, PICKERS
from ..ui import as_event, as_float, as_int, idle, progress, show, status, streamed
from .common import INVERTER_LABELS, Picked

MASK_CAPTION = "**Where it may change** (with local blend words; the rest is kept)"
SAMPLE_PROMPTS = {  # sample file stem -> (source prompt, target prompt, local-blend words)
    "red-triangle": ("a red triangle", "a blue triangle", "triangle"),
    "blue-circle-dark": ("a blue circle on a dark background", "a blue square on a dark background", "circle | square"),
    "striped-green-square": ("a striped green square", "a dotted green square", "square"),
    "yellow-star": ("a yellow star", "a purple star", "star"),
    "dotted-purple-cross": ("a dotted purple cross", "a dotted red cross", ""),
}
_ED, _NT = EditConfig(), NullTextConfig()
NULL_METHODS = ("null-text", "negative-prompt")  # the inversions whose null embedding the targets may share (EditConfig.target_null)


@dataclass
class EditForm(Picked):
    choice: str = ORIGINAL
    image: object = None  # Gradio's raw file payload (preprocess=False), so an unreadable upload gets our own message
    source: str = "a red triangle"
    target: str = "a blue triangle"
    method: str = METHODS[0]
    mode: str = _ED.mode
    cross: float = _ED.cross_replace_steps
    self_steps: float = _ED.self_replace_steps
    target_null: str = _ED.target_null
    reweight: str = ""
    blend: str = ""
    steps: int = _NT.num_inference_steps
    guidance: float = _NT.guidance_scale
    inner_steps: int = _NT.num_inner_steps
    fit: str = "crop"


def read_image(image):
    """The upload as a PIL image; errors name the file the user chose, not the server's copy."""
    from studio.images import load_image

    path = image.get("path") if isinstance(image, dict) else image
    if not path:
        raise ValueError("upload an image first, or pick one of the samples below")
    name = image.get("orig_name") if isinstance(image, dict) else None
    try:
        return load_image(path)
    except ValueError as e:
        raise ValueError(str(e).replace(str(path), f"'{name}'" if name else "the upload")) from None


def options_of(form) -> dict:
    """The prompt-to-prompt options of the form (`EditConfig` fields)."""
    options = {
        "mode": form.mode,
        "cross_replace_steps": as_float(form.cross, "cross replace steps"),
        "self_replace_steps": as_float(form.self_steps, "self replace steps"),
    }
    if form.method in NULL_METHODS:
        if form.target_null not in TARGET_NULLS:
            raise ValueError(f"target null must be one of {', '.join(TARGET_NULLS)}, got {form.target_null!r}")
        options["target_null"] = form.target_null
    weights = parse_reweight(form.reweight)
    if weights:
        options["reweight"] = weights
    blend = parse_blend(form.blend)
    if blend:
        options["blend_words"] = blend
    return options


def results_layout(c: dict) -> None:
    """The right-hand column: status, the four images with their captions, the details."""
    c["status"] = gr.HTML(
        idle("Upload an image or pick a sample, describe it, say what to change, then press Edit."),
        label="Edit status",
        elem_id="edit-status",
    )
    with gr.Row():
        shown = dict(format="png", interactive=False, height=220, show_label=False, buttons=["download"])
        with gr.Column(min_width=150):
            c["input"] = gr.Image(label="Input", **shown, elem_id="edit-input")
            gr.Markdown("**Input**, as the model sees it", elem_classes=["caption"])
        with gr.Column(min_width=150):
            c["recon"] = gr.Image(label="Reconstruction", **shown, elem_id="edit-recon")
            c["recon_cap"] = gr.Markdown(
                "**Reconstruction** (PSNR against the input)", elem_classes=["caption"], elem_id="edit-recon-caption"
            )
        with gr.Column(min_width=150):
            c["edit"] = gr.Image(label="Edit", **shown, elem_id="edit-edit")
            c["edit_cap"] = gr.Markdown("**Edit**", elem_classes=["caption"], elem_id="edit-edit-caption")
        with gr.Column(min_width=150):
            c["mask"] = gr.Image(label="Local blend", **shown, elem_id="edit-mask")
            c["mask_cap"] = gr.Markdown(MASK_CAPTION, elem_classes=["caption"], elem_id="edit-mask-caption")
    c["info"] = gr.Markdown("", label="Edit details", elem_id="edit-info")


class EditTab:
    name, title = "edit", "Edit"
    outputs = ("status", "input", "recon", "edit", "mask", "info", "recon_cap", "edit_cap", "mask_cap")

    def __init__(self, studio):
        self.studio = studio

    def layout(self) -> dict:
        f, c = EditForm(), {}
        with gr.Row():
            with gr.Column(scale=2):
                c["choice"] = gr.Dropdown(
                    self.studio.tab_choices({"erased": {}}, PICKERS["edit.choice"]),
                    value=f.choice,
                    label="Edit with",
                    allow_custom_value=True,
                    info="an erased model edits with the concept erased",
                    elem_id="edit-model",
                )
                c["image"] = gr.Image(
                    type="filepath", label="Image", sources=["upload", "clipboard"], height=200, format="png", elem_id="edit-image"
                )
                with gr.Row():
                    c["source"] = gr.Textbox(f.source, label="Source prompt", info="describes the image", elem_id="edit-source")
                    c["target"] = gr.Textbox(f.target, label="Target prompt", info="the words to change", elem_id="edit-target")
                with gr.Row():
                    c["reweight"] = gr.Textbox(
                        f.reweight,
                        label="Reweight",
                        placeholder="blue=2, striped=0.5",
                        elem_id="edit-reweight",
                        info="WORD=SCALE pairs, on the target prompt's words",
                    )
                    c["blend"] = gr.Textbox(
                        f.blend,
                        label="Local blend words",
                        placeholder="triangle   or   red | blue",
                        elem_id="edit-blend",
                        info="words in both prompts, or source words | target words; only their region changes",
                    )
                samples = sorted(SAMPLES.glob("*.png"))
                if samples:
                    gr.Examples(
                        [[str(p), *SAMPLE_PROMPTS.get(p.stem, ("", "", ""))] for p in samples],
                        inputs=[c["image"], c["source"], c["target"], c["blend"]],
                        label="Samples (toy world): click one",
                        examples_per_page=8,
                        visible_columns=[0, 1, 2],
                        elem_id="edit-samples",
                    )
                with gr.Row():
                    c["method"] = gr.Dropdown(
                        [(INVERTER_LABELS.get(m, m), m) for m in METHODS], value=f.method, label="Inversion", elem_id="edit-method"
                    )
                    c["mode"] = gr.Radio(
                        ["auto", "replace", "refine"],
                        value=f.mode,
                        label="Prompt-to-prompt",
                        elem_id="edit-mode",
                        info="replace: same word count; refine: words added",
                    )
                with gr.Row():
                    c["cross"] = gr.Slider(
                        0, 1, value=f.cross, step=0.05, label="Cross-attention steps", info="share of steps with the source's word maps"
                    )
                    c["self_steps"] = gr.Slider(
                        0, 1, value=f.self_steps, step=0.05, label="Self-attention steps", info="share of steps with the source's layout"
                    )
                c["target_null"] = gr.Radio(
                    [("shared (paper)", "shared"), ("empty", "empty")],
                    value=f.target_null,
                    label="Target rows' null",
                    elem_id="edit-target-null",
                    visible=f.method in NULL_METHODS,
                    info="shared: the source's fitted null on every row, as the paper (on the toy it negative-prompts the source); "
                    "empty: the targets take the empty prompt's (benchmarks/results/editing_table.md)",
                )
                with gr.Row():
                    c["steps"] = gr.Number(f.steps, label="Steps", min_width=80, elem_id="edit-steps")
                    c["guidance"] = gr.Number(f.guidance, label="Guidance", min_width=80)
                    c["inner_steps"] = gr.Number(f.inner_steps, label="Null-text inner steps", min_width=80, elem_id="edit-inner")
                    c["fit"] = gr.Radio(["crop", "pad"], value=f.fit, label="Fit", min_width=80)
                with gr.Row():
                    c["run"] = gr.Button("Edit", variant="primary", elem_id="edit-run")
                    c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="edit-cancel")
            with gr.Column(scale=3):
                results_layout(c)
        return c

    def wire(self, page, light: dict, compute: dict) -> None:
        c = page.tab(self.name)
        outputs = page.outputs(self.name, self.outputs)
        inputs = page.form_inputs(self.name, EditForm)
        c["run"].click(
            streamed(self.run, outputs, EditForm),
            [page["state"]],
            list(outputs.values()),
            inputs_kwargs=inputs,
            api_name="edit",
            preprocess=False,
            **compute,
        )
        c["cancel"].click(self.studio.canceller("edit"), None, None, api_name="cancel_edit", **light)
        c["method"].change(
            lambda m: gr.update(visible=m == "null-text"), [c["method"]], [c["inner_steps"]], api_visibility="private", **light
        )
        c["method"].change(
            lambda m: gr.update(visible=m in NULL_METHODS), [c["method"]], [c["target_null"]], api_visibility="private", **light
        )

    def run(self, form, state, session):
        from inversion import INVERTERS
        from inversion import edit as edit_image
        from studio.latents import decode, resolution, to_pil
        from studio.images import psnr

        picture = read_image(form.image)
        source, target = (form.source or "").strip(), (form.target or "").strip()
        if not source:
            raise ValueError("type a source prompt that describes the image, e.g. 'a red triangle'")
        if not target:
            raise ValueError("type a target prompt: the source prompt with the words you want changed, e.g. 'a blue triangle'")
        if form.method not in METHODS:
            raise ValueError(f"unknown inversion method {form.method!r}; use one of {', '.join(METHODS)}")
        steps, guidance = as_int(form.steps, "steps", 1), as_float(form.guidance, "guidance")
        inv_kwargs = {"num_inference_steps": steps, "guidance_scale": guidance}
        if form.method == "null-text":
            inv_kwargs["num_inner_steps"] = as_int(form.inner_steps, "null-text inner steps", 0)
        inv_config = INVERTERS[form.method][1](**inv_kwargs)
        options = options_of(form)
        yield {
            "status": status(0, 1, "Loading the model ..."),
            "input": None,
            "recon": None,
            "edit": None,
            "mask": None,
            "info": "",
            "recon_cap": "**Reconstruction**",
            "edit_cap": "**Edit**",
            "mask_cap": MASK_CAPTION,
        }
        pipe, label = self.studio.resolve(form.choice, form.model, form.text_encoder, state)
        res = resolution(pipe)
        small = min(picture.size) < res / 4
        if small:
            gr.Warning(f"the image is {picture.width}x{picture.height} px; it is upscaled to {res}x{res}, so there is little to invert")
        preview_every = max(1, steps // 10)

        def work(emit, cancel):
            def callback(info):
                ev = as_event(info)
                emit(("event", ev))
                if ev["stage"] == "edit" and "denoised" in info and ((ev["step"] - 1) % preview_every == 0 or ev["step"] == steps):
                    emit(("image", ev["step"], to_pil(decode(pipe, info["denoised"][1:2].float()))[0]))

            return edit_image(
                pipe,
                picture,
                source,
                target,
                form.method,
                inversion_config=inv_config,
                fit=form.fit,
                callback=callback,
                cancel=cancel,
                **options,
            )

        with self.studio.cancels.running(session, "edit") as cancel:
            job, latest = Job(work, cancel, name="studio-edit"), None
            try:
                for events in job.stream():
                    upd = {}
                    for kind, *payload in events:
                        if kind == "image":
                            upd["edit"], upd["edit_cap"] = show(payload[1]), f"**Edit**, step {payload[0]} / {steps}"
                        else:
                            latest = payload[0]
                    upd["status"] = progress(f"Editing with {label}", latest, job.seconds)
                    yield upd
                result = job.result
            except Cancelled:
                yield {"status": status(0, 1, "Cancelled.", "cancelled")}
                return
        yield self.shown(result, form, label, job.seconds, psnr(result.reconstruction, result.image), small, res)

    def shown(self, result, form, label, seconds, score, small, res) -> dict:
        mask = None
        if result.blend_mask is not None:
            # the input half-way to white where the edit may change it and to black where it was kept: a
            # view that never equals the input itself (the same bytes twice in one answer made Gradio
            # rewrite one cached file while serving it, and the page showed a broken image)
            inside = result.blend_mask[0][..., None]
            pixels = np.asarray(result.image, dtype=np.float32)
            mask = Image.fromarray((0.5 * pixels + np.where(inside, 127.5, 0.0)).round().astype(np.uint8))
        st = result.stats
        info = (
            f"{form.method} inversion on {label}: {st.get('mode', form.mode)} mode, {st.get('inversion_seconds', 0):.1f} s to invert, "
            f"{st.get('edit_seconds', 0):.1f} s to edit. {result.inversion.stats.get('image', '')}."
        )
        if form.method in NULL_METHODS:
            info += f" The targets' null: {form.target_null}."
        if small:
            info += f" The input was upscaled to {res}x{res}: an image this small holds little to invert."
        blend = MASK_CAPTION if mask is None else f"**Where it may change**: {result.blend_mask[0].mean():.0%} of the image (local blend)"
        return {
            "status": status(1, 1, f"Done in {seconds:.1f} s. Reconstruction PSNR {score:.1f} dB.", "done"),
            "input": show(result.image),
            "recon": gr.update(value=show(result.reconstruction), label=f"Reconstruction, PSNR {score:.1f} dB"),
            "recon_cap": f"**Reconstruction**, PSNR {score:.1f} dB",
            "edit": show(result.edit),
            "edit_cap": f"**Edit**: {html.escape(form.target)}",
            "mask": show(mask),
            "mask_cap": blend,
            "info": info,
        }
