"""Plug-in text encoders: export an erased text encoder as a standard `CLIPTextModel` folder, and
import the official AdvUnlearn releases.

    export_text_encoder(pipe.text_encoder, "outputs/triangle-plugin", base_model="toy", concept=..., method="advunlearn")
    te = CLIPTextModel.from_pretrained("outputs/triangle-plugin")                     # any SD pipeline of the family:
    pipe = StableDiffusionPipeline.from_pretrained(base, text_encoder=te)

The folder holds `config.json`, `model.safetensors` in the SD key layout (`text_model.*`, which both
transformers 4 and 5 load) and a model card (`README.md`: base model, concept, method, settings,
evaluation table with every rate's count and 95% Wilson interval, and the report card of
`studio eval --attacks ...` where there is one: each attack's success rate, cost and settings, with the
judge and sampler settings that reproduce the numbers).

The official releases (HF `OPTML-Group/AdvUnlearn`, subfolders like `nudity_unlearned`) are
`CLIPTextModel` folders with pickle weights (`pytorch_model.bin`); the official training script
saves `.pt` state dicts of its `CustomTextEncoder` wrapper. Both load here only with
`allow_pickle=True`, because unpickling can run code; keys are checked strictly.
"""

import json
from pathlib import Path

import torch

from studio.loading import ModelLoadError, load_text_encoder
from studio.text_encoder import save_text_encoder

CARD = """---
library_name: transformers
base_model: {base_model}
tags:
- concept-erasure
- {method}
- erasure-studio
- text-to-image
---

# Plug-in text encoder: "{concept}" erased with {method_title}

A `CLIPTextModel` for Stable Diffusion pipelines of the same family as `{base_model}`, trained by
Erasure Studio so that prompts for **{concept}** no longer bring it back, including under
adversarial prompts. The UNet and VAE are unchanged: swap this encoder into any pipeline.

```python
from transformers import CLIPTextModel
from diffusers import StableDiffusionPipeline

text_encoder = CLIPTextModel.from_pretrained("path/to/this/folder")
pipe = StableDiffusionPipeline.from_pretrained("{base_model}", text_encoder=text_encoder)
```

## How it was made

- base model: `{base_model}`
- concept prompts: {prompts}
- method: {method_title}
- settings: {settings}
- training: {stats}

## Evaluation

{evaluation}
{report_card}"""

METHOD_TITLES = {
    "advunlearn": "AdvUnlearn (Zhang et al., NeurIPS 2024): adversarial training of the text encoder",
}


def export_text_encoder(
    text_encoder,
    folder,
    *,
    base_model: str = "toy",
    concept=None,
    method: str = "advunlearn",
    settings: dict | None = None,
    stats: dict | None = None,
    evaluation: str | None = None,
    report_card: dict | None = None,
) -> Path:
    """Write a plug-in encoder folder (config, SD-layout safetensors, model card). Returns the folder.
    `report_card` is the "card" of an evaluation with attacks (`erasers.evaluate.report_card`, or
    report_card.json of `studio eval --attacks`): it goes into the model card with its settings."""
    folder = Path(folder)
    save_text_encoder(text_encoder, folder)
    prompts = getattr(concept, "prompts", concept) or []
    name = getattr(concept, "name", None) or (prompts[0] if prompts else "the concept")
    card = CARD.format(
        base_model=base_model,
        method=method,
        method_title=METHOD_TITLES.get(method, method),
        concept=name,
        prompts=", ".join(f"`{p}`" for p in prompts) or "-",
        settings=", ".join(f"{k}={v}" for k, v in (settings or {}).items()) or "-",
        stats=", ".join(f"{k}={v}" for k, v in (stats or {}).items() if not isinstance(v, (list, dict))) or "-",
        evaluation=evaluation or "Not evaluated at export time; run `studio eval` and keep its report beside this folder.",
        report_card=card_section(report_card) if report_card else "",
    )
    (folder / "README.md").write_text(card)
    return folder


def card_section(card: dict) -> str:
    """The model card's "Report card" section: the attacks' table (rates with intervals, cost), which
    differences are beyond the intervals, the judge and sampler, and each attack's full settings."""
    from .evaluate import format_card, format_card_settings

    names = ",".join(card["attacks"])
    prompts, seeds = len(card["prompts"]), card.get("seeds_per_prompt", 1)
    sets = " ".join(
        f"--attack-set {name}.{k}={json.dumps(v, separators=(',', ':'))}"
        for name, e in card["attacks"].items()
        if isinstance(e.get("config"), dict)
        for k, v in e["config"].items()
    )
    return (
        "\n## Report card\n\n"
        + format_card(card)
        + "\n\nEach attack's settings (its config's fields):\n\n"
        + format_card_settings(card)
        + f"\n\nReproduce (with the judge and sampler above): `studio eval --erased <the erased model> --concept {card['concept']} "
        + f"--attacks {names} --attack-prompts {prompts} --attack-seeds {seeds} {sets}`\n"
    )


def export_from_erased(erased_folder, out, evaluation: str | None = None, report_card: dict | None = None) -> Path:
    """Export the text encoder of an erased model folder written by `ErasureResult.save`; the evaluation
    (report.md) and report card (report_card.json) of `studio eval` in eval/ beside it go into the model card."""
    erased_folder = Path(erased_folder)
    info_path = erased_folder / "erasure.json"
    if not info_path.is_file():
        raise ModelLoadError(f"{erased_folder} is not an erased model folder (no erasure.json)")
    info = json.loads(info_path.read_text())
    te_dir = erased_folder / "text_encoder"
    if not te_dir.is_dir():
        raise ModelLoadError(
            f"{erased_folder} was erased with {info.get('method')}, which changed the {', '.join(info.get('components', [])) or 'UNet'}, "
            "not the text encoder; only text-encoder erasures (AdvUnlearn) export as plug-in encoders"
        )
    if evaluation is None:
        report = erased_folder.parent / "eval" / "report.md"
        evaluation = report.read_text() if report.is_file() else None
    if report_card is None:
        card_file = erased_folder.parent / "eval" / "report_card.json"
        report_card = json.loads(card_file.read_text()) if card_file.is_file() else None
    if report_card and evaluation:
        evaluation = evaluation.split("\n\nReport card: ")[0]  # report.md ends with the card: it gets its own section
    te = load_text_encoder(te_dir)
    concept = info.get("concept", {})

    class _C:  # the concept as saved
        prompts = concept.get("prompts", [])
        name = concept.get("name")

    return export_text_encoder(
        te,
        out,
        base_model=info.get("base_model", "toy"),
        concept=_C,
        method=info.get("method", "advunlearn"),
        settings=info.get("config"),
        stats=info.get("stats"),
        evaluation=evaluation,
        report_card=report_card,
    )


def _strip_official_keys(state: dict) -> dict:
    """Map an official `CustomTextEncoder` state dict to `CLIPTextModel` keys (SD layout).

    The wrapper saves the inner model under `text_encoder.text_model.*` and again, as aliases, under
    `embedding.*`, `encoder.*` and `final_layer_norm.*`; the aliases must equal the inner tensors."""
    if any(k.startswith("text_encoder.") for k in state):
        inner = {k[len("text_encoder.") :]: v for k, v in state.items() if k.startswith("text_encoder.")}
        for k, v in state.items():
            if k.startswith("text_encoder."):
                continue
            alias = {
                "embedding.": "text_model.embeddings.",
                "encoder.": "text_model.encoder.",
                "final_layer_norm.": "text_model.final_layer_norm.",
            }
            target = next((t + k[len(a) :] for a, t in alias.items() if k.startswith(a)), None)
            if target is None or target not in inner:
                raise ModelLoadError(f"unexpected key {k!r} in the official checkpoint")
            if not torch.equal(inner[target], v):
                raise ModelLoadError(f"the official checkpoint's alias {k!r} disagrees with {target!r}")
        return inner
    return state


def load_official_advunlearn(path, base_text_encoder=None, *, allow_pickle: bool = False):
    """A `CLIPTextModel` from an official AdvUnlearn release folder or training `.pt` (pickle: opt-in)."""
    path = Path(path)
    if path.is_dir():
        return load_text_encoder(path, allow_pickle=allow_pickle)
    if not path.is_file():
        raise ModelLoadError(f"no AdvUnlearn checkpoint at {path}")
    if not allow_pickle:
        raise ModelLoadError(
            f"{path.name} is a pickle checkpoint; unpickling can run arbitrary code. Pass allow_pickle=True "
            "(CLI: --allow-pickle) if you trust the source."
        )
    if base_text_encoder is None:
        raise ModelLoadError("a training .pt holds only weights: pass base_text_encoder (the base model's CLIPTextModel) to load them into")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = _strip_official_keys(state)
    model_keys = base_text_encoder.state_dict().keys()
    prefixed = any(k.startswith("text_model.") for k in model_keys)
    fixed = {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue
        if prefixed and not k.startswith("text_model."):
            k = f"text_model.{k}"
        if not prefixed and k.startswith("text_model."):
            k = k[len("text_model.") :]
        fixed[k] = v
    missing = [k for k in model_keys if k not in fixed and not k.endswith("position_ids")]
    unexpected = [k for k in fixed if k not in model_keys]
    if missing or unexpected:
        raise ModelLoadError(f"{path.name} does not match the text encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    base_text_encoder.load_state_dict(fixed, strict=False)  # position_ids buffers aside, every key was checked above
    return base_text_encoder
