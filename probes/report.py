"""The probe report: several models (erased, oracle, original) x several probes, as JSON, Markdown and grids.

    report = probe_models({"erased": pipe_a, "oracle": pipe_b}, "triangle", ["relearning", "inversion"], configs)
    write_report(report, "outputs/probe-triangle")      # report.json, report.md, grids/<model>-<probe>.png

A relearning result on the erased model is compared with the oracle's of the same k and component
(`relearning.compare`): the ratio of their steps to a 50% concept rate. The distance result (on the
erased model's entry, measured on every model) is a table of each model's judged distribution and its
KID to the oracle and to the original (`distance_rows`).
"""

import json
from pathlib import Path

from studio.checkpoint import atomic_write_text

from .common import rate_text


def probe_key(probe: str, config) -> str:
    """'relearning-k4' for relearning (one result per k), else the probe's name."""
    return f"relearning-k{config.images}" if probe == "relearning" else probe


def add_comparisons(report: dict) -> None:
    """Relearning ratios of every model to the oracle's result of the same key, in place."""
    from .relearning import compare

    oracle = report["models"].get("oracle")
    if oracle is None:
        return
    for label, model in report["models"].items():
        if label == "oracle":
            continue
        for key, res in model["results"].items():
            if key.startswith("relearning") and key in oracle["results"]:
                if res["summary"].get("component") == oracle["results"][key]["summary"].get("component"):
                    res["summary"].update(compare(_Result(res), oracle["results"][key]))


class _Result:
    def __init__(self, d):
        self.summary = d["summary"]


def _relearning_rows(models: dict, key: str) -> list:
    steps = sorted({p["step"] for m in models.values() if key in m["results"] for p in m["results"][key]["measurements"]["curve"]})
    head = "| model | component | " + " | ".join(f"s={s}" for s in steps) + " | steps to 50% | ratio to oracle |"
    rows = [head, "|" + "---|" * (len(steps) + 4)]
    for label, m in models.items():
        if key not in m["results"]:
            continue
        r = m["results"][key]
        by = {p["step"]: p["text"] for p in r["measurements"]["curve"]}
        s = r["summary"]
        reach = f"{s['steps_to_threshold']:.0f}" if s.get("steps_to_threshold") is not None else f"> {s['steps']}"
        rows.append(
            f"| {label} | {s['component']} | " + " | ".join(by.get(x, "-") for x in steps) + f" | {reach} | {s.get('ratio_text', '-')} |"
        )
    return rows


def distance_rows(result: dict) -> list:
    """One row per model drawn: what it draws for the concept, retain as asked, and its distances to the references."""
    from .distance import distribution_text, kid_text, pair

    m = result["measurements"]
    labels = list(m["models"])
    refs = [r for r in ("oracle", "original") if r in labels] or [r for r in labels if r != m["subject"]]
    head = f"| model | concept prompts: judged {m['attribute']} | concept shown | retain as asked | "
    head += " | ".join(f"concept KID x1000 to {r} | TV to {r} | retain KID x1000 to {r}" for r in refs) + " |"
    rows = [head, "|" + "---|" * (4 + 3 * len(refs))]
    for label in labels:
        v = m["models"][label]
        cells = [label, distribution_text(v["drawn"]), rate_text(v["shown"]), rate_text(v["retained"])]
        for r in refs:
            p = pair(m, label, r) if r != label else None
            cells += [kid_text(p["concept"]), f"{p['concept']['tv']:.2f}", kid_text(p["retain"])] if p else ["-", "-", "-"]
        rows.append("| " + " | ".join(cells) + " |")
    s = result["config"]
    rows += [
        "",
        (
            f"Every model on the same {s['prompts']} direct prompts x {s['seeds']} seeds of the concept and {s['retain_prompts']} "
            f"prompts x {s['seeds']} seeds of each other {m['attribute']} (DDIM {s['num_inference_steps']} steps, guidance {s['guidance_scale']}). "
            "KID x1000 on judge features, paired over (prompt, seed), ± its standard error from random halves; TV: total-variation "
            "distance of the judged distributions."
        ),
    ]
    return rows


def format_report(report: dict) -> str:
    models = report["models"]
    lines = [f"# Revival probes: {report['concept']}", ""]
    for label, m in models.items():
        lines.append(f"- {label}: {m['path']}" + (f" (relearning updates {m['component']})" if m.get("component") else ""))
    keys = list(dict.fromkeys(k for m in models.values() for k in m["results"]))
    for key in keys:
        lines += ["", f"## {key}", ""]
        if key.startswith("relearning"):
            lines += _relearning_rows(models, key)
        elif key == "inversion":
            lines += [
                "| model | method | PSNR (dB) | concept in reconstructions | z_T mean square | VAE round trip (dB) |",
                "|---|---|---|---|---|---|",
            ]
            for label, m in models.items():
                if key in m["results"]:
                    ms = m["results"][key]["measurements"]
                    for method, v in ms["methods"].items():
                        lines.append(
                            f"| {label} | {method} | {v['psnr']:.1f} | {rate_text(v['rate'])} | {v['latent_mean_square']:.2f} | {ms['vae_roundtrip_psnr']:.1f} |"
                        )
        elif key == "completion":
            cells = list(
                dict.fromkeys(c for m in models.values() if key in m["results"] for c in m["results"][key]["measurements"]["cells"])
            )
            lines += ["| model | " + " | ".join(f"t={c.replace('/', ', ')}" for c in cells) + " |", "|" + "---|" * (len(cells) + 1)]
            for label, m in models.items():
                if key in m["results"]:
                    cs = m["results"][key]["measurements"]["cells"]
                    lines.append(f"| {label} | " + " | ".join(rate_text(cs[c]["rate"]) if c in cs else "-" for c in cells) + " |")
        elif key == "distance":
            for label, m in models.items():
                if key in m["results"]:
                    lines += distance_rows(m["results"][key])
        elif key == "inpainting":
            lines += ["| model | concept prompt | empty prompt | context only (no model) |", "|---|---|---|---|"]
            for label, m in models.items():
                if key in m["results"]:
                    ms = m["results"][key]["measurements"]
                    cs = ms["cells"]
                    cell = lambda mode: rate_text(cs[mode]["rate"]) if mode in cs else "-"  # noqa: E731
                    lines.append(f"| {label} | {cell('concept')} | {cell('empty')} | {rate_text(ms['context_only'])} |")
        costs = ", ".join(
            f"{label} {m['results'][key]['stats']['unet_evals']} UNet evals / {m['results'][key]['stats']['seconds']:.0f} s"
            for label, m in models.items()
            if key in m["results"]
        )
        if key == "distance":
            drawn = [label for m in models.values() if key in m["results"] for label in m["results"][key]["measurements"]["models"]]
            costs += f" (the sampling of every model: {', '.join(drawn)})"
        lines += ["", f"Cost: {costs}."]
    lines += ["", "Rates: share (k/n) [95% Wilson interval]."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder, grids: dict | None = None) -> Path:
    """report.json, report.md and grids/<model>-<probe>.png (`grids`: name -> PIL image)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.json", json.dumps(report, indent=2, default=float))
    atomic_write_text(folder / "report.md", format_report(report))
    if grids:
        (folder / "grids").mkdir(exist_ok=True)
        for name, image in grids.items():
            if image is not None:
                image.save(folder / "grids" / f"{name}.png")
    return folder
