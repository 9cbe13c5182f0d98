"""The Generate tab: the model picked at the top and (optionally) another one, side by side on the same
prompts and seeds, with live previews; on the toy world, what the judge sees under each image."""

from dataclasses import dataclass

import gradio as gr

from studio.sampling import Cancelled, check_prompt

from ..runner import Job
from ..shared import ORIGINAL, PICKERS
from ..ui import as_event, as_float, as_int, idle, judge_caption, lines, parse_seeds, progress, status, streamed
from .common import Picked

MAX_IMAGES = 64  # per generate call, to keep a mistyped seed list from running for an hour


@dataclass
class GenerateForm(Picked):
    compare: str = ORIGINAL
    prompts_text: str = "a red triangle\na blue circle"
    negative: str = ""
    seeds_text: str = "0, 1, 2, 3"
    steps: int = 50
    guidance: float = 7.5


def prompt_grid(images, prompts, seeds, title, captions=None):
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


class GenerateTab:
    name, title = "generate", "Generate"
    outputs = ("status", "left", "right")

    def __init__(self, studio):
        self.studio = studio

    def layout(self) -> dict:
        f, c = GenerateForm(), {}
        with gr.Row():
            c["prompts_text"] = gr.Textbox(f.prompts_text, lines=3, label="Prompts", info="one per line", scale=3, elem_id="gen-prompts")
            with gr.Column(scale=2):
                c["compare"] = gr.Dropdown(
                    self.studio.tab_choices({"erased": {}}, PICKERS["generate.compare"]),
                    value=f.compare,
                    label="Compare with",
                    allow_custom_value=True,
                    info="drawn on the same seeds, side by side",
                    elem_id="gen-model",
                )
                c["negative"] = gr.Textbox(f.negative, label="Negative prompt")
            with gr.Column(scale=2):
                with gr.Row():
                    c["seeds_text"] = gr.Textbox(f.seeds_text, label="Seeds", info="'0, 1, 2' or '0-7'", min_width=90, elem_id="gen-seeds")
                    c["steps"] = gr.Number(f.steps, label="Steps", info="DDIM", min_width=70, elem_id="gen-steps")
                    c["guidance"] = gr.Number(f.guidance, label="Guidance", info="CFG scale", min_width=70)
                with gr.Row():
                    c["run"] = gr.Button("Generate", variant="primary", elem_id="gen-run")
                    c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="gen-cancel")
        c["status"] = gr.HTML(idle("Type prompts, then press Generate."), label="Generate status", elem_id="gen-status")
        with gr.Row():
            image = dict(show_label=False, format="png", interactive=False, buttons=["download", "fullscreen"])
            c["left"] = gr.Image(label="The model above", elem_id="gen-left", **image)
            c["right"] = gr.Image(label="Compared model", visible=False, elem_id="gen-right", **image)
        return c

    def wire(self, page, light: dict, compute: dict) -> None:
        c = page.tab(self.name)
        outputs = page.outputs(self.name, self.outputs)
        inputs = page.form_inputs(self.name, GenerateForm)
        c["run"].click(
            streamed(self.run, outputs, GenerateForm),
            [page["state"]],
            list(outputs.values()),
            inputs_kwargs=inputs,
            api_name="generate",
            **compute,
        )
        c["cancel"].click(self.studio.canceller("generate"), None, None, api_name="cancel_generate", **light)

    def run(self, form, state, session):
        from studio.latents import resolution

        prompts = lines(form.prompts_text)
        if not prompts:
            raise ValueError("type a prompt first, e.g. 'a red triangle' (one per line)")
        seeds = parse_seeds(form.seeds_text)
        if len(prompts) * len(seeds) > MAX_IMAGES:
            raise ValueError(
                f"{len(prompts)} prompts x {len(seeds)} seeds is {len(prompts) * len(seeds)} images; the app draws at most {MAX_IMAGES} per run"
            )
        steps, guidance = as_int(form.steps, "steps", 1), as_float(form.guidance, "guidance")
        yield {"status": status(0, 1, "Loading the models ...")}
        left, left_label = self.studio.resolve(ORIGINAL, form.model, form.text_encoder, state)
        models = [(left, left_label, "left")]
        if form.compare and form.compare != ORIGINAL:
            right, right_label = self.studio.resolve(form.compare, form.model, form.text_encoder, state)
            models.append((right, right_label, "right"))
        for p in prompts + ([form.negative] if form.negative else []):
            check_prompt(left.tokenizer, p)
        judge = self.studio.judge("toy") if resolution(left) == 32 else None  # the toy world: say what the judge sees
        jobs = [(p, s) for p in prompts for s in seeds]
        preview_every = max(1, steps // 8)

        def work(emit, cancel):
            from studio.latents import decode, to_pil
            from studio.sampling import sample

            for m, (pipe, label, _) in enumerate(models):

                def callback(info, m=m, pipe=pipe, label=label):
                    ev = as_event(info, "sampling")
                    emit((m, ev, None))
                    if (ev["step"] - 1) % preview_every == 0 and ev["step"] < steps and "denoised" in info:
                        images = to_pil(decode(pipe, info["denoised"]))
                        emit((m, ev, prompt_grid(images, prompts, seeds, f"{label} (step {ev['step']} / {steps})")))

                res = sample(
                    pipe,
                    [p for p, _ in jobs],
                    seed=[s for _, s in jobs],
                    negative_prompt=form.negative or "",
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    callback=callback,
                    cancel=cancel,
                )
                captions = [judge_caption(pred) for pred in judge.predict(res.images)] if judge is not None else None
                emit((m, {"stage": "sampling", "step": steps, "total": steps}, prompt_grid(res.images, prompts, seeds, label, captions)))

        upd = {"right": gr.update(visible=len(models) > 1, value=None)}
        with self.studio.cancels.running(session, "generate") as cancel:
            job, part, latest = Job(work, cancel, name="studio-generate"), 0, None
            try:
                for events in job.stream():
                    for m, ev, image in events:
                        part, latest = m, ev
                        if image is not None:
                            upd[models[m][2]] = gr.update(value=image, label=models[m][1])
                    upd["status"] = progress(f"Sampling {len(jobs)} image(s) per model", latest, job.seconds, part=(part, len(models)))
                    yield upd
                    upd = {}
                job.result  # noqa: B018 (re-raises the worker's error, e.g. Cancelled)
            except Cancelled:
                yield {"status": status(0, 1, "Cancelled.", "cancelled")}
                return
        side = "on both sides" if len(models) > 1 else "(pick a model under 'Compare with' to see it beside)"
        note = " Under each image: what the toy judge sees." if judge is not None else ""
        yield {"status": status(1, 1, f"{len(jobs)} image(s) per model in {job.seconds:.1f} s, same seeds {side}.{note}", "done")}
