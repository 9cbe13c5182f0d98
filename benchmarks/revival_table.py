"""The revival table: is an erased concept gone, or only dormant? Every eraser against the oracle.

Models: every registered eraser (`erasers.METHODS`) at its toy preset, erased from the shipped toy
model with `erasers.erase(pipe, erasers.toy_target(method, concept), method, preset="toy")` and kept
under runs/revival_models/ (they take minutes; not committed), plus the original model and the
oracle (the toy model retrained without the concept, assets/toy-oracle-CONCEPT; a concept without
one is marked "no oracle yet"). Probes (`probes`): relearning with k = 4 and k = 16 images
(the component each eraser changed; the original and the oracle are fine-tuned in every component
the erasers of the run use, so that each ratio compares like with like), inversion (DDIM and
null-text), diffusion completion, inpainting.

Every cell (model x concept x probe) is cached as JSON with its grid (PNG) under
benchmarks/results/revival_cells/; relearning runs and erasures checkpoint under runs/, so a killed
run resumes where it stopped and a finished cell is never recomputed (`--fresh` recomputes).

    python benchmarks/revival_table.py --budget small --methods none --concepts triangle     # the machinery, in minutes
    python benchmarks/revival_table.py                                                       # the whole table (hours on 2 CPU cores)
    python benchmarks/revival_table.py --cached                                              # rewrite the table from the cells
"""

import argparse
import json
import sys
import time
from pathlib import Path

from _util import RESULTS, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import probes  # noqa: E402
from erasers import METHODS, erase, get_config, toy_target  # noqa: E402
from probes.relearning import compare, method_component  # noqa: E402
from studio.checkpoint import atomic_write_text  # noqa: E402
from studio.loading import load_pipeline  # noqa: E402
from studio.stats import format_rate  # noqa: E402
from studio.toyworld.oracle import oracle_path  # noqa: E402


CELLS = RESULTS / "revival_cells"
MODELS = ROOT / "runs" / "revival_models"  # erased models (not committed)
CHECKPOINTS = ROOT / "runs" / "revival_checkpoints"  # relearning runs in progress (not committed)
KINDS = ("relearning-k4", "relearning-k16", "inversion", "completion", "inpainting")
REFERENCES = ("original", "oracle")
NO_ORACLE = "no oracle yet"


def rate(d) -> str:
    return format_rate(d["k"], d["n"])


# ---------------------------------------------------------------- models


def model_path(model: str, concept: str, log=print) -> str | None:
    """The folder (or 'toy') of `model` for `concept`; erased models are made once and kept. None: no oracle."""
    if model == "original":
        return "toy"
    if model == "oracle":
        path = oracle_path(concept)
        return str(path) if (path / "oracle.json").is_file() else None
    folder = MODELS / f"{model}--{concept}"
    if not (folder / "erasure.json").is_file():
        log(f"erasing {concept} with {model} (toy preset) -> {folder}")
        pipe = load_pipeline("toy")
        t0 = time.time()
        result = erase(
            pipe, toy_target(model, concept), model, preset="toy", checkpoint_dir=MODELS / f"{model}--{concept}.checkpoint", progress=True
        )
        result.stats["wall_seconds"] = round(time.time() - t0, 1)
        result.save(folder, pipe, base_model="toy")
    return str(folder)


def erase_stats(model: str, concept: str) -> dict:
    marker = MODELS / f"{model}--{concept}" / "erasure.json"
    return json.loads(marker.read_text()).get("stats", {}) if marker.is_file() else {}


# ---------------------------------------------------------------- cells


def cell_name(model: str, concept: str, kind: str, component: str | None, budget: str) -> str:
    return "--".join([model, concept, kind] + ([component] if component else []) + ([budget] if budget != "default" else []))


def probe_config(kind: str, component: str | None, budget: str):
    if kind.startswith("relearning"):
        return "relearning", probes.get_config("relearning", {"images": int(kind.split("-k")[1]), "component": component}, budget=budget)
    return kind, probes.get_config(kind, budget=budget)


def run_cell(
    model: str, concept: str, kind: str, component: str | None, budget: str, judge, *, fresh=False, cached_only=False, log=print
) -> dict | None:
    name = cell_name(model, concept, kind, component, budget)
    path = CELLS / f"{name}.json"
    if path.is_file() and not fresh:
        return json.loads(path.read_text())
    if model == "oracle" and model_path(model, concept) is None:
        return {"model": model, "concept": concept, "kind": kind, "component": component, "missing": NO_ORACLE}
    if cached_only:
        return None
    folder = model_path(model, concept, log)
    probe, config = probe_config(kind, component, budget)
    log(f"{name}: running")
    pipe = load_pipeline(folder)
    extra = {"checkpoint_dir": CHECKPOINTS / name} if probe == "relearning" else {}
    result = probes.run_probe(probe, pipe, concept, config, judge=judge, progress=True, **extra)
    cell = {
        "model": model,
        "concept": concept,
        "kind": kind,
        "component": component,
        "budget": budget,
        "path": str(folder),
        **result.as_dict(),
    }
    CELLS.mkdir(parents=True, exist_ok=True)
    grid = result.grid(title=f"{model} / {concept}: {kind}" + (f" ({component})" if component else ""))
    if grid is not None:
        grid.save(CELLS / f"{name}.png")
    atomic_write_text(path, json.dumps(cell, indent=2, default=float))  # last: a cell on disk is a finished cell
    log(f"{name}: {probes.format_result(result)} [{result.stats['unet_evals']:,} UNet evals, {result.stats['seconds']:.0f} s]")
    return cell


def plan(methods: list, concepts: list, kinds: list, references: list) -> list:
    """[(model, concept, kind, component)] in the order they run: erased models first, then the references."""
    try:  # what relearning updates on each erased model: what the eraser changes at its toy preset
        changed = {m: method_component(m, get_config(m, "toy")) for m in methods}
    except ValueError as e:
        raise SystemExit(f"{e}; add it to probes.relearning.METHOD_COMPONENTS") from None
    components = sorted(set(changed.values())) or ["cross-attention"]
    jobs = []
    for concept in concepts:
        for m in methods:
            for kind in kinds:
                jobs.append((m, concept, kind, changed[m] if kind.startswith("relearning") else None))
        for ref in references:
            for kind in kinds:
                for comp in components if kind.startswith("relearning") else [None]:
                    jobs.append((ref, concept, kind, comp))
    return jobs


# ---------------------------------------------------------------- the table


def cost(c: dict) -> str:
    s = c.get("stats", {})
    return f"{s.get('unet_evals', 0):,} / {s.get('seconds', 0):.0f} s"


def table(cells: list, budget: str) -> str:
    by = {(c["model"], c["concept"], c["kind"], c.get("component")): c for c in cells}
    concepts = list(dict.fromkeys(c["concept"] for c in cells))
    models = list(dict.fromkeys(c["model"] for c in cells if c["model"] not in REFERENCES)) + [
        r for r in REFERENCES if any(c["model"] == r for c in cells)
    ]
    out = [
        f"Revival probes on the toy model (budget: {budget}). Rates: judged concept rate, share (k/n) [95% Wilson interval]. "
        "Cost: UNet evaluations / wall seconds on 2 shared CPU cores.",
    ]
    for concept in concepts:
        out += ["", f"## {concept}"]
        if any(c["concept"] == concept and c.get("missing") for c in cells):
            out.append(f"\nOracle: {NO_ORACLE} (train it with `studio toyworld train --without {concept} --install`).")
        for kind in [k for k in KINDS if k.startswith("relearning")]:
            rows = [c for c in cells if c["concept"] == concept and c["kind"] == kind and not c.get("missing")]
            if not rows:
                continue
            steps = sorted({p["step"] for c in rows for p in c["measurements"]["curve"]})
            out += [
                "",
                f"### Relearning, k = {kind.split('-k')[1]} images (fine-tuning the component the eraser changed; the references in each)",
                "",
            ]
            out.append("| model | component | " + " | ".join(f"s={s}" for s in steps) + " | steps to 50% | ratio to oracle | cost |")
            out.append("|" + "---|" * (len(steps) + 5))
            for model in models:
                for c in sorted((c for c in rows if c["model"] == model), key=lambda c: c["component"] or ""):
                    curve = {p["step"]: rate(p["rate"]) for p in c["measurements"]["curve"]}
                    s = c["summary"]
                    reach = f"{s['steps_to_threshold']:.0f}" if s.get("steps_to_threshold") is not None else f"> {s['steps']}"
                    oracle = by.get(("oracle", concept, kind, c["component"]))
                    if model == "oracle":
                        ratio = "1"
                    elif oracle is None:
                        ratio = "-"
                    elif oracle.get("missing"):
                        ratio = NO_ORACLE
                    else:
                        ratio = compare(_R(c), oracle).get("ratio_text", "-")
                    out.append(
                        f"| {model} | {c['component']} | "
                        + " | ".join(curve.get(x, "-") for x in steps)
                        + f" | {reach} | {ratio} | {cost(c)} |"
                    )
        rows = {c["model"]: c for c in cells if c["concept"] == concept and c["kind"] == "inversion" and not c.get("missing")}
        if rows:
            methods = list(dict.fromkeys(m for c in rows.values() for m in c["measurements"]["methods"]))
            out += ["", "### Inversion: reconstructions of renders inverted by the model", ""]
            out.append("| model | " + " | ".join(f"{m} PSNR | {m} concept" for m in methods) + " | VAE round trip | cost |")
            out.append("|" + "---|" * (2 * len(methods) + 3))
            for model in models:
                if model in rows:
                    ms = rows[model]["measurements"]
                    cellsx = " | ".join(
                        f"{ms['methods'][m]['psnr']:.1f} dB | {rate(ms['methods'][m]['rate'])}" if m in ms["methods"] else "- | -"
                        for m in methods
                    )
                    out.append(f"| {model} | {cellsx} | {ms['vae_roundtrip_psnr']:.1f} dB | {cost(rows[model])} |")
        rows = {c["model"]: c for c in cells if c["concept"] == concept and c["kind"] == "completion" and not c.get("missing")}
        if rows:
            keys = list(dict.fromkeys(k for c in rows.values() for k in c["measurements"]["cells"]))
            out += ["", "### Diffusion completion: renders noised to t (fraction of the schedule), finished by the model", ""]
            out.append("| model | " + " | ".join(f"t={k.replace('/', ', ')}" for k in keys) + " | cost |")
            out.append("|" + "---|" * (len(keys) + 2))
            for model in models:
                if model in rows:
                    cs = rows[model]["measurements"]["cells"]
                    out.append(
                        f"| {model} | " + " | ".join(rate(cs[k]["rate"]) if k in cs else "-" for k in keys) + f" | {cost(rows[model])} |"
                    )
        rows = {c["model"]: c for c in cells if c["concept"] == concept and c["kind"] == "inpainting" and not c.get("missing")}
        if rows:
            out += ["", "### Inpainting: half of a render masked, filled by latent blending", ""]
            out.append("| model | concept prompt | empty prompt | context only (no model) | cost |")
            out.append("|---|---|---|---|---|")
            for model in models:
                if model in rows:
                    ms = rows[model]["measurements"]
                    cs = ms["cells"]
                    f = lambda k: rate(cs[k]["rate"]) if k in cs else "-"  # noqa: E731
                    out.append(f"| {model} | {f('concept')} | {f('empty')} | {rate(ms['context_only'])} | {cost(rows[model])} |")
        erased = [m for m in models if m not in REFERENCES and erase_stats(m, concept)]
        if erased:
            parts = [
                f"{m} {erase_stats(m, concept).get('unet_evals', 0):,} UNet evals / {erase_stats(m, concept).get('seconds', 0):.0f} s"
                for m in erased
            ]
            out += ["", "Erasure cost (toy preset): " + ", ".join(parts) + "."]
    return "\n".join(out)


class _R:
    def __init__(self, c):
        self.summary = c["summary"]


def parse(text: str, known, what: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip() and t.strip() != "none"]
    if what == "probes":
        items = [k for t in items for k in (("relearning-k4", "relearning-k16") if t == "relearning" else (t,))]
    bad = [t for t in items if t not in known]
    if bad:
        raise SystemExit(f"unknown {what} {', '.join(bad)}; use some of {', '.join(known)} (or 'none')")
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS), help="erasers (default: every registered one; 'none' for the references only)")
    ap.add_argument("--concepts", default="triangle,striped")
    ap.add_argument("--probes", default=",".join(KINDS), help=f"some of {', '.join(KINDS)} ('relearning' = both k)")
    ap.add_argument("--references", default="original,oracle", help="original and/or oracle ('none' for neither)")
    ap.add_argument(
        "--budget",
        choices=list(probes.BUDGETS),
        default="default",
        help="'small': a few images and steps per probe (probes.SMALL), minutes; 'medium': probes.MEDIUM",
    )
    ap.add_argument("--fresh", action="store_true", help="recompute the cells of this run")
    ap.add_argument("--cached", action="store_true", help="only the cells already computed (rewrite the table)")
    ap.add_argument("--plan", action="store_true", help="print the cells still to run and their planned UNet evaluations; run nothing")
    args = ap.parse_args()
    methods = parse(args.methods, METHODS, "methods")
    concepts = [probes.common.erasable_concept(c).name for c in args.concepts.split(",") if c.strip()]
    kinds = parse(args.probes, KINDS, "probes")
    refs = parse(args.references, REFERENCES, "references")
    judge = probes.default_judge()
    jobs = plan(methods, concepts, kinds, refs)
    print(f"{len(jobs)} cells ({args.budget} budget)")
    if args.plan:
        todo = [
            j
            for j in jobs
            if not (CELLS / f"{cell_name(*j, args.budget)}.json").is_file()
            and not (j[0] == "oracle" and model_path("oracle", j[1]) is None)
        ]
        evals = sum(probe_config(kind, comp, args.budget)[1].planned_unet_evals() for _, _, kind, comp in todo)
        erase = sorted({(m, c) for m, c, _, _ in todo if m not in REFERENCES and not (MODELS / f"{m}--{c}" / "erasure.json").is_file()})
        print(f"{len(todo)} cells to run, {evals:,} planned UNet evaluations (probes only); erasures to run first: {erase or 'none'}")
        return
    cells = []
    for i, (model, concept, kind, component) in enumerate(jobs):
        c = run_cell(
            model,
            concept,
            kind,
            component,
            args.budget,
            judge,
            fresh=args.fresh,
            cached_only=args.cached,
            log=lambda s, i=i: print(f"[{i + 1}/{len(jobs)}] {s}", flush=True),
        )
        if c is not None:
            cells.append(c)
    name = "revival_table" if args.budget == "default" else f"revival_table_{args.budget}"
    write_results(name, {"budget": args.budget, "cells": [{k: v for k, v in c.items()} for c in cells]}, table(cells, args.budget))


if __name__ == "__main__":
    main()
