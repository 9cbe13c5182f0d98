"""Choose the toy world's ESD presets: a small sweep of learning rate x budget per variant.

SD's defaults (lr 5e-5, 200 iterations) are for an 860M-parameter UNet; on the toy UNet they may do
too little or wreck everything. For each variant (esd-x, esd-u), concept (a shape and a style) and
learning rate, one run trains to the largest budget and is measured at every budget on the way:

  * concept rate: share of images of the concept's direct prompts that the judge reads as the concept;
  * retained: share of images of the other concepts' prompts (same attribute kind) judged correct
    on every attribute the prompt asks for, relative to the original model's.

The preset of a variant is the (lr, budget) that maximises the mean erasure over the two concepts
while both keep retained >= 90% of the original's; ties go to the smaller budget.

    python benchmarks/esd_sweep.py [--lrs 3e-5,1e-4,3e-4,1e-3] [--budgets 50,100,200,400]

The same sweep chooses AdvUnlearn's toy preset (results in advunlearn_sweep.json/.md):

    python benchmarks/esd_sweep.py --methods advunlearn --name advunlearn_sweep \
        --base '{"warmup_iterations": 30, "num_inference_steps": 20, "retain_weight": 0.5}'
"""

import argparse
import itertools
import json
import time

import numpy as np
import torch

from _util import write_results
from erasers import Concept, erase, get_config
from erasers.evaluate import EvalConfig, all_match, generate, toy_spec
from studio.judges import get_judge
from studio.loading import load_pipeline
from studio.toyworld.captions import erasure_prompts


def quick_eval(pipe, name, judge, seeds=2, steps=25, n=8):
    """(concept rate on direct prompts, retained accuracy on the other concepts of its kind), judged as
    `erasers.evaluate` does (the erased attribute's kind plus shape/colour; background is left free)."""
    cfg = EvalConfig(seeds=seeds, num_inference_steps=steps, prompts_per_form=n, retain_prompts_per_concept=4)
    spec = toy_spec(name, cfg)
    rate = float(judge.shows(generate(pipe, spec.forms["direct"], cfg), name).mean())
    preds = judge.predict(generate(pipe, [p for p, _ in spec.retain], cfg))
    asked = [a for _, a in spec.retain for _ in range(seeds)]
    acc = float(np.mean([all_match(p, a) for p, a in zip(preds, asked)]))
    return rate, acc


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", default="esd-x,esd-u")
    ap.add_argument("--concepts", default="triangle,striped")
    ap.add_argument("--lrs", default="3e-5,1e-4,3e-4,1e-3")
    ap.add_argument("--budgets", default="50,100,200,400")
    ap.add_argument("--base", default="{}", help="JSON: config fields on top of the official defaults")
    ap.add_argument("--name", default="esd_sweep", help="results file name")
    ap.add_argument("--keep", type=float, default=0.9, help="retained accuracy must stay >= keep x the original's")
    args = ap.parse_args()
    methods, concepts = args.methods.split(","), args.concepts.split(",")
    lrs = [float(x) for x in args.lrs.split(",")]
    budgets = sorted(int(x) for x in args.budgets.split(","))
    judge = get_judge("toy")
    t0 = time.time()

    base = load_pipeline("toy")
    original = {c: quick_eval(base, c, judge) for c in concepts}
    rows = []
    for method, name, lr in itertools.product(methods, concepts, lrs):
        pipe = load_pipeline("toy")
        config = get_config(method, "official", {**json.loads(args.base), "iterations": budgets[-1], "lr": lr})
        measured = {}

        def at_budget(info, pipe=pipe, name=name, measured=measured):
            if info["step"] in budgets:
                measured[info["step"]] = quick_eval(pipe, name, judge)

        start = time.time()
        erase(pipe, Concept(erasure_prompts(name), name=name), method, config=config, callback=at_budget, progress=False)
        for b in budgets:
            rate, acc = measured[b]
            rows.append(
                {
                    "method": method,
                    "concept": name,
                    "lr": lr,
                    "iterations": b,
                    "concept_rate": rate,
                    "retained": acc,
                    "retained_ratio": acc / max(original[name][1], 1e-9),
                    "seconds_full_run": time.time() - start,
                }
            )
            print(json.dumps(rows[-1]))

    presets = {}
    for method in methods:
        best = None
        for lr, b in itertools.product(lrs, budgets):
            sel = [r for r in rows if r["method"] == method and r["lr"] == lr and r["iterations"] == b]
            if len(sel) != len(concepts) or any(r["retained_ratio"] < args.keep for r in sel):
                continue
            erasure = float(np.mean([1 - r["concept_rate"] for r in sel]))
            key = (round(erasure, 3), -b)
            if best is None or key > best[0]:
                best = (key, lr, b, erasure)
        if best:
            presets[method] = {**json.loads(args.base), "lr": best[1], "iterations": best[2], "mean_erasure": best[3]}

    lines = [
        f"{args.methods} sweep on the toy model (concepts: {', '.join(concepts)}; quick evaluation: 8 direct prompts x 2 seeds, DDIM 25 steps).",
        "Original model: " + ", ".join(f"{c} shown {original[c][0]:.0%}, others correct {original[c][1]:.0%}" for c in concepts) + ".",
        "",
        "| method | concept | lr | iterations | concept shown | retained (ratio to original) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['concept']} | {r['lr']:g} | {r['iterations']} | {r['concept_rate']:.0%} | {r['retained']:.0%} ({r['retained_ratio']:.2f}) |"
        )
    lines += [
        "",
        f"Presets (max mean erasure with retained >= {args.keep:.0%} of the original's on both concepts; ties to the smaller budget):",
        "",
    ]
    for m, p in presets.items():
        lines.append(
            f"- `{m}`: "
            + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items() if k != "mean_erasure")
            + f" (mean erasure {p['mean_erasure']:.0%})"
        )
    lines.append(f"\nTotal time {time.time() - t0:.0f} s.")
    lines.insert(1, f"Settings on top of the official defaults: {args.base}." if args.base != "{}" else "")
    write_results(args.name, {"args": vars(args), "original": original, "rows": rows, "presets": presets}, "\n".join(lines))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
