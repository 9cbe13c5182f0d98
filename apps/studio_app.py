"""The Erasure Studio app: erase a concept, attack the erased model, edit real images, compare models.

    studio app                                   # http://127.0.0.1:7860, the shipped toy model
    studio app --model CompVis/stable-diffusion-v1-4 --outputs outputs --port 7861

    from apps.studio_app import build_app, launch_kwargs
    demo = build_app(outputs="outputs")
    demo.launch(**launch_kwargs())

One file per tab under `apps/tabs/` (erase, attack, edit, generate, probe), each with its form dataclass,
layout, handlers and outputs, over `apps/shared.py` (models, pickers, allowed paths, cancels) and
`apps/ui.py` (errors, the one progress renderer, value checks). This file lays out the page: the
model picker at the top, then the tabs, then wires every tab's events.

Every long handler is a generator that runs the library call in a worker thread (`runner.Job`) and
streams its callback events; the Cancel buttons set the `cancel` event the library call polls, so
the work stops. Heavy events share one queue slot per device (`concurrency_id="compute"`). Results
live in per-session `gr.State`, so two browser sessions never see each other's erasures. Errors reach
the page as `gr.Error` with the library's own message, never as a stack trace.

The server binds 127.0.0.1 by default, sends no analytics and fetches nothing (fonts are local), and
serves no files of its own folders except through Gradio's cache (`allowed_paths` stays empty):
downloads are written to a temporary folder and handed to Gradio from there. A hub id typed into the
model field is loaded from the local Hugging Face cache, or downloaded unless HF_HUB_OFFLINE is set
(`studio app --offline`).
"""

import gradio as gr

from .shared import Studio, hub_offline
from .tabs.attack import AttackTab
from .tabs.edit import EditTab
from .tabs.erase import EraseTab
from .tabs.generate import GenerateTab
from .tabs.probe import ProbeTab
from .ui import CSS, form_inputs, friendly, theme

TABS = (EraseTab, AttackTab, EditTab, GenerateTab, ProbeTab)
SHARED_FIELDS = {"model": "model", "text_encoder": "encoder"}  # form field -> the shared component it reads


class Page:
    """The built page's components: shared ones by name ("state", "model", "encoder"), a tab's as "tab.name"."""

    def __init__(self, demo):
        self.demo, self.shared, self.tabs = demo, {}, {}

    def __getitem__(self, name: str):
        if "." in name:
            tab, key = name.split(".", 1)
            return self.tabs[tab][key]
        return self.shared[name]

    def tab(self, name: str) -> dict:
        return self.tabs[name]

    def outputs(self, tab: str, names) -> dict:
        """{output name: component} for a tab's handler; a name is the tab's own, shared, or 'other_tab.name'."""
        return {n: self[n] if ("." in n or n in self.shared) else self.tabs[tab][n] for n in names}

    def form_inputs(self, tab: str, form_cls) -> dict:
        """`inputs_kwargs` of a tab's form: the model fields from the top of the page, the rest from the tab."""
        comps = {**self.tabs[tab], **{f: self.shared[c] for f, c in SHARED_FIELDS.items()}}
        return form_inputs(form_cls, comps)


def header(studio: Studio, page: Page) -> None:
    gr.Markdown(
        "# Erasure Studio\nErase a concept from a text-to-image model, attack the erased model, edit real images.", elem_id="studio-header"
    )
    hub = (
        "from the local Hugging Face cache only: the app is offline"
        if hub_offline()
        else "from the local cache, else downloaded from the hub"
    )
    paths = (
        "inside the output folder, the Hugging Face cache or an --allow-root folder"
        if studio.restricted
        else "a diffusers folder or a .safetensors file"
    )
    with gr.Row():
        page.shared["model"] = gr.Dropdown(
            studio.model_choices(),
            value=studio.default_model,
            allow_custom_value=True,
            label="Model",
            scale=3,
            info=f"the shipped toy model, an erased model from the output folder, {paths}, or a hub id ({hub})",
            elem_id="model",
        )
        page.shared["encoder"] = gr.Dropdown(
            studio.encoder_choices(),
            value="",
            label="Plug-in text encoder",
            scale=2,
            elem_id="encoder",
            info="replaces the model's text encoder (AdvUnlearn exports)",
        )
        page.shared["load"] = gr.Button("Load", scale=0, min_width=90, elem_id="model-load")
    page.shared["model_info"] = gr.Markdown("", elem_id="model-info")


def build(studio: Studio) -> gr.Blocks:
    tabs = [cls(studio) for cls in TABS]
    with gr.Blocks(title="Erasure Studio", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        page = Page(demo)
        page.shared["state"] = gr.State({"erased": {}, "last": None})
        header(studio, page)
        with gr.Tabs():
            for tab in tabs:
                with gr.Tab(tab.title, id=tab.name):
                    page.tabs[tab.name] = tab.layout()
        compute = {"concurrency_id": "compute", "concurrency_limit": studio.concurrency, "show_progress": "hidden"}
        light = {"concurrency_limit": None, "show_progress": "hidden"}
        pickers = [page["model"], page["encoder"], page["attack.victim"], page["edit.choice"], page["generate.compare"]]
        demo.load(friendly(studio.on_load), [page["state"]], pickers, api_name="refresh_models", **light)
        page["load"].click(
            friendly(studio.check_model),
            [page["model"], page["encoder"]],
            [page["model_info"]],
            api_name="check_model",
            concurrency_id="compute",
            concurrency_limit=studio.concurrency,
            show_progress="minimal",
        )
        for tab in tabs:
            tab.wire(page, light, compute)
        demo.unload(studio.on_unload)
    demo.queue(max_size=32, default_concurrency_limit=studio.concurrency)
    return demo


def build_app(outputs="outputs", model: str = "toy", **kwargs) -> gr.Blocks:
    """The app's `gr.Blocks` (queued); launch it with `demo.launch(**launch_kwargs())`. `kwargs` go to
    `Studio` (device, dtype, judge_path, concurrency, host, allow_roots)."""
    return build(Studio(outputs, model, **kwargs))


def launch_kwargs(host: str = "127.0.0.1", port: int | None = None, **extra) -> dict:
    """Local-only, no share link, our theme and CSS, no files served beyond Gradio's own cache."""
    return dict(
        server_name=host,
        server_port=port,
        share=False,
        show_error=True,
        quiet=True,
        theme=theme(),
        css=CSS,
        allowed_paths=[],
        max_file_size="50mb",
        ssr_mode=False,
        footer_links=["api"],
        **extra,
    )
