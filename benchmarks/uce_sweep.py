"""Choose the toy world's UCE preset, and compare the two official token policies.

UCE's official settings (lamb 0.5, erase_scale 1, the 2023 code's last-word-to-end rows) are for SD's
768-d text space; on the toy model (64-d) the same edit may erase but also move the other concepts.
For each token policy and erase_scale, one UCE edit of each concept (a shape and a style) is judged
as the ESD sweep does (`esd_sweep.quick_eval`: 8 direct prompts x 2 seeds, DDIM 25 steps, and the
other concepts of its kind for the retained accuracy). The preset is the setting with the most mean
erasure over the concepts while both keep retained >= 90% of the original's; ties go to the larger
erase_scale (the official value is 1).

    python benchmarks/uce_sweep.py [--scales 0.01,0.03,0.1,0.3,1] [--concepts triangle,striped]
    python benchmarks/uce_sweep.py --retain others --scales 0.1,0.3,1 --rewrite-scales 1   # -> uce_sweep_retain.md

    python benchmarks/uce_sweep.py --method rece --retain others --reg-scales 0.1,0.001 --epochs 3     # -> rece_sweep.md

`--method rece` sweeps RECE on top of the UCE toy preset instead: regular_scale x epochs (every epoch of one
run is judged), same criterion; ties go to fewer epochs.

`--retain others` preserves the other concepts of the erased one's kind (their erasure prompts, "a circle",
"a square", ...), the toy analogue of the official art setting that preserves every other artist.
"""

import argparse
import json
import time

import numpy as np
import torch

from _util import write_results
from esd_sweep import quick_eval
from erasers import Concept
from erasers.uce import UCEConfig, erase
from studio.judges import get_judge
from studio.loading import load_pipeline
from studio.toyworld.captions import erasure_prompts


def others_of(name: str) -> list:
    """The erasure prompts of the other concepts of `name`'s kind ("a circle", "a square", ... for "triangle")."""
    from studio.toyworld.grammar import concept, concepts_of

    return [p for c in concepts_of(concept(name).attribute) if c.name != name for p in erasure_prompts(c.name)]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--concepts", default="triangle,striped")
    ap.add_argument("--scales", default="0.01,0.03,0.1,0.3,1")
    ap.add_argument("--rewrite-scales", default="1,10", help="erase_scales tried with the 2025 rewrite's last_token rows")
    ap.add_argument("--lamb", type=float, default=0.5)
    ap.add_argument("--keep", type=float, default=0.9)
    ap.add_argument(
        "--retain", choices=("none", "others"), default="none", help="preserve set: '' only, or also the other concepts of the kind"
    )
    ap.add_argument("--method", choices=("uce", "rece"), default="uce")
    ap.add_argument("--reg-scales", default="0.1,0.001", help="RECE regular_scale values")
    ap.add_argument("--epochs", type=int, default=3, help="RECE epochs (each judged)")
    ap.add_argument(
        "--base", default="{}", help="RECE: JSON of config fields on top of the official ones, e.g. '{\"preserve_scale\": 1.0}'"
    )
    ap.add_argument("--name", default=None, help="results file name (default uce_sweep[_retain] / rece_sweep)")
    args = ap.parse_args()
    concepts = args.concepts.split(",")
    judge = get_judge("toy")
    t0 = time.time()
    original = {c: quick_eval(load_pipeline("toy"), c, judge) for c in concepts}
    if args.method == "rece":
        return rece_sweep(args, concepts, judge, original, t0)
    settings = [("last_to_end", float(s)) for s in args.scales.split(",")] + [
        ("last_token", float(s)) for s in args.rewrite_scales.split(",")
    ]
    rows = []
    for policy, scale in settings:
        for name in concepts:
            pipe = load_pipeline("toy")
            config = UCEConfig(
                token_policy=policy, erase_scale=scale, lamb=args.lamb, preserve_scale=None if policy == "last_to_end" else 1.0
            )
            retain = others_of(name) if args.retain == "others" else []
            result = erase(pipe, Concept(erasure_prompts(name), retain=retain, name=name), config, progress=False)
            rate, acc = quick_eval(pipe, name, judge)
            rows.append(
                {
                    "token_policy": policy,
                    "erase_scale": scale,
                    "lamb": args.lamb,
                    "concept": name,
                    "concept_rate": rate,
                    "retained": acc,
                    "retained_ratio": acc / max(original[name][1], 1e-9),
                    "erase_seconds": result.stats["seconds"],
                }
            )
            print(json.dumps(rows[-1]))

    best = None
    for policy, scale in settings:
        sel = [r for r in rows if r["token_policy"] == policy and r["erase_scale"] == scale]
        if any(r["retained_ratio"] < args.keep for r in sel):
            continue
        erasure = float(np.mean([1 - r["concept_rate"] for r in sel]))
        key = (round(erasure, 3), scale)
        if best is None or key > best[0]:
            best = (key, policy, scale, erasure)
    preset = {"token_policy": best[1], "erase_scale": best[2], "lamb": args.lamb} if best else None

    lines = [
        f"UCE sweep on the toy model (concepts: {', '.join(concepts)}; quick evaluation: 8 direct prompts x 2 seeds, DDIM 25 steps; lamb {args.lamb}; "
        f"preserve set: {'the other concepts of the kind, plus' if args.retain == 'others' else 'only'} '' under last_to_end).",
        "",
        "Original model: " + ", ".join(f"{c} shown {original[c][0]:.0%}, others correct {original[c][1]:.0%}" for c in concepts) + ".",
        "",
        "| token policy | erase_scale | concept | concept shown | retained (ratio to original) | edit seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['token_policy']} | {r['erase_scale']:g} | {r['concept']} | {r['concept_rate']:.0%} | {r['retained']:.0%} ({r['retained_ratio']:.2f}) | {r['erase_seconds']:.3f} |"
        )
    lines += [
        "",
        f"Preset (max mean erasure with retained >= {args.keep:.0%} of the original's on every concept; ties to the larger erase_scale):",
        "",
    ]
    lines.append(f"- `uce`: {preset} (mean erasure {best[3]:.0%})" if best else "- none met the criterion")
    lines.append(f"\nTotal time {time.time() - t0:.0f} s.")
    write_results(
        args.name or ("uce_sweep" if args.retain == "none" else "uce_sweep_retain"),
        {"args": vars(args), "original": original, "rows": rows, "preset": preset},
        "\n".join(lines),
    )


def rece_sweep(args, concepts, judge, original, t0):
    from erasers.rece import RECEConfig, erase as rece_erase
    from erasers.uce import TOY_PRESETS

    rows = []
    for reg in [float(x) for x in args.reg_scales.split(",")]:
        for name in concepts:
            pipe = load_pipeline("toy")
            config = RECEConfig(
                **{
                    **json.loads(args.base),
                    "epochs": args.epochs,
                    "regular_scale": reg,
                    "uce_erase_scale": TOY_PRESETS["uce"]["erase_scale"],
                }
            )
            retain = others_of(name) if args.retain == "others" else []

            def judged(info, pipe=pipe, name=name, reg=reg):
                if info["stage"] == "rece":
                    rate, acc = quick_eval(pipe, name, judge)
                    rows.append(
                        {
                            "regular_scale": reg,
                            "epochs": info["step"],
                            "concept": name,
                            "concept_rate": rate,
                            "retained": acc,
                            "retained_ratio": acc / max(original[name][1], 1e-9),
                        }
                    )
                    print(json.dumps(rows[-1]))

            rece_erase(pipe, Concept(erasure_prompts(name), retain=retain, name=name), config, callback=judged, progress=False)
    best = None
    for reg in sorted({r["regular_scale"] for r in rows}):
        for ep in range(1, args.epochs + 1):
            sel = [r for r in rows if r["regular_scale"] == reg and r["epochs"] == ep]
            if len(sel) != len(concepts) or any(r["retained_ratio"] < args.keep for r in sel):
                continue
            erasure = float(np.mean([1 - r["concept_rate"] for r in sel]))
            key = (round(erasure, 3), -ep)
            if best is None or key > best[0]:
                best = (key, reg, ep, erasure)
    preset = (
        {**json.loads(args.base), "regular_scale": best[1], "epochs": best[2], "uce_erase_scale": TOY_PRESETS["uce"]["erase_scale"]}
        if best
        else None
    )
    lines = [
        f"RECE sweep on the toy model (concepts: {', '.join(concepts)}; step 0 = the UCE toy preset; RECE settings official"
        f"{', except ' + args.base if args.base != '{}' else ''}; quick evaluation as "
        f"the UCE sweep; preserve set: {'the other concepts of the kind and' if args.retain == 'others' else 'only'} '').",
        "",
        "Original model: " + ", ".join(f"{c} shown {original[c][0]:.0%}, others correct {original[c][1]:.0%}" for c in concepts) + ".",
        "",
        "| regular_scale | epochs | concept | concept shown | retained (ratio to original) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['regular_scale']:g} | {r['epochs']} | {r['concept']} | {r['concept_rate']:.0%} | {r['retained']:.0%} ({r['retained_ratio']:.2f}) |"
        )
    lines += [
        "",
        f"Preset (max mean erasure with retained >= {args.keep:.0%} of the original's on every concept; ties to fewer epochs):",
        "",
    ]
    lines.append(f"- `rece`: {preset} (mean erasure {best[3]:.0%})" if best else "- none met the criterion")
    lines.append(f"\nTotal time {time.time() - t0:.0f} s.")
    write_results(args.name or "rece_sweep", {"args": vars(args), "original": original, "rows": rows, "preset": preset}, "\n".join(lines))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
