"""Several concepts erased into one model, against erasing them one at a time.

For each group ({triangle, star} and {striped, dotted} by default) and each method, the toy model is
erased twice: once with every concept of the group in one job (`erasers.erase(pipe, [c1, c2], method)`:
one solve for UCE and RECE, a shared prompt set for ESD and AdvUnlearn) and once per concept alone. Each
erased model is judged on each concept's direct prompts (the concept's rate) and on the other concepts
of the kind that no erasure in the group touches (retained accuracy: the judge agrees with every
attribute the prompt asks among the kind and shape/colour, as `erasers.evaluate` scores utility).
A shared prompt set splits the preset's steps between the concepts, so the iterative methods get a third
mode, "together, N x steps": the preset's iterations times the group's size, each concept's share of the
steps then equal to its erasure alone (the same total as one at a time).
Every rate with its count and 95% Wilson interval. Cells (method x group x mode) are cached as JSON in
`benchmarks/results/multi_concept_cells/` and a rerun skips them.

    OMP_NUM_THREADS=1 python benchmarks/multi_concept.py                       # uce, rece (seconds per cell)
    OMP_NUM_THREADS=1 python benchmarks/multi_concept.py --methods esd-x       # ~1-2 min per erasure on 2 cores

Each method runs at its toy preset (`preset="toy"`) with the toy world's targets (`erasers.toy_target`).
"""

import argparse
import json
import time

from _util import RESULTS, write_results

from erasers import erase, get_config, several_concepts, toy_target
from erasers.evaluate import EvalConfig, all_match, generate, toy_spec
from studio.judges import get_judge
from studio.loading import load_pipeline
from studio.stats import Rate, format_rate, overlap

CELLS = RESULTS / "multi_concept_cells"


def judged(pipe, group, judge, cfg) -> dict:
    """Each concept's rate on its direct prompts, and retained accuracy on the concepts of the kind none erases."""
    out, retain = {}, None
    for name in group:
        spec = toy_spec(name, cfg)
        shown = judge.shows(generate(pipe, spec.forms["direct"], cfg), name)
        out[name] = Rate(int(shown.sum()), len(shown)).as_dict()
        kept = [(p, a) for p, a in spec.retain if not set(a.values()) & set(group)]
        retain = kept if retain is None else [x for x in retain if x in kept]
    preds = judge.predict(generate(pipe, [p for p, _ in retain], cfg))
    asked = [a for _, a in retain for _ in range(cfg.seeds)]
    ok = sum(all_match(p, a) for p, a in zip(preds, asked))
    out["retained"] = Rate(int(ok), len(asked)).as_dict()
    return out


def cell(method, group, mode, judge, cfg) -> dict:
    path = CELLS / f"{method}--{'+'.join(group)}--{mode}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    if mode in ("together", "together-scaled"):
        pipe = load_pipeline("toy")
        config = get_config(method, "toy")
        if mode == "together-scaled":
            config = get_config(method, "toy", {"iterations": config.iterations * len(group)})
        result = erase(pipe, toy_target(method, "+".join(group)), method, config=config, progress=False)
        row = {
            "erase_seconds": time.perf_counter() - t0,
            "unet_evals": result.stats.get("unet_evals", 0),
            **judged(pipe, group, judge, cfg),
        }
    else:  # one model per concept; each concept judged on its own model, retained on each model
        row = {"erase_seconds": 0.0, "unet_evals": 0}
        for name in group:
            pipe = load_pipeline("toy")
            t1 = time.perf_counter()
            result = erase(pipe, toy_target(method, name), method, preset="toy", progress=False)
            row["erase_seconds"] += time.perf_counter() - t1
            row["unet_evals"] += result.stats.get("unet_evals", 0)
            j = judged(pipe, group, judge, cfg)
            row[name] = j[name]
            row[f"retained_after_{name}"] = j["retained"]
    row["seconds"] = time.perf_counter() - t0
    CELLS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=2))
    tmp.replace(path)
    return row


def rate(d) -> str:
    return format_rate(d["k"], d["n"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="uce,rece")
    ap.add_argument("--groups", default="triangle+star,striped+dotted")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8, help="direct prompts per concept")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cached", action="store_true", help="only the cells already measured (a missing one is left out)")
    ap.add_argument("--no-scaled", action="store_true", help="skip the 'together, N x steps' mode where it is not measured yet")
    args = ap.parse_args()
    judge = get_judge("toy")
    cfg = EvalConfig(seeds=args.seeds, prompts_per_form=args.prompts, num_inference_steps=args.steps, retain_prompts_per_concept=4)
    groups = [g.split("+") for g in args.groups.split(",")]
    original = {}
    for g in groups:
        path = CELLS / f"original--{'+'.join(g)}.json"
        if not path.exists():
            CELLS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(judged(load_pipeline("toy"), g, judge, cfg), indent=2))
        original["+".join(g)] = json.loads(path.read_text())
    lines = [
        "# Several concepts in one model vs one at a time (toy world)",
        "",
        (
            f"Judged on {args.prompts} direct prompts x {args.seeds} seeds per concept (DDIM {args.steps}, CFG 7.5); retained: the other "
            "concepts of the kind that no erasure in the group touches, 4 prompts each. Concept rates are the share of images that "
            "still show the concept (lower is better). One erasure seed; each method at its toy preset."
        ),
        "",
        "| method | group | mode | concept 1 shown | concept 2 shown | retained | erase s |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = {}
    for g in groups:
        key = "+".join(g)
        o = original[key]
        lines.append(f"| original | {key} | - | {rate(o[g[0]])} | {rate(o[g[1]])} | {rate(o['retained'])} | - |")
    for method in args.methods.split(","):
        for g in groups:
            key = "+".join(g)
            done = [(CELLS / f"{method}--{key}--{m}.json").exists() for m in ("together", "alone")]
            if args.cached and not all(done):
                lines.append(f"| {method} | {key} | not measured yet | | | | |")
                continue
            together, alone = cell(method, g, "together", judge, cfg), cell(method, g, "alone", judge, cfg)
            rows[f"{method}/{key}"] = {"together": together, "alone": alone}
            lines.append(
                f"| {method} | {key} | together | {rate(together[g[0]])} | {rate(together[g[1]])} | {rate(together['retained'])} "
                f"| {together['erase_seconds']:.1f} |"
            )
            scaled_done = (CELLS / f"{method}--{key}--together-scaled.json").exists()
            if several_concepts(method) == "shared prompt set" and (scaled_done or not (args.cached or args.no_scaled)):
                scaled = cell(method, g, "together-scaled", judge, cfg)
                rows[f"{method}/{key}"]["together-scaled"] = scaled
                lines.append(
                    f"| {method} | {key} | together, {len(g)} x steps | {rate(scaled[g[0]])} | {rate(scaled[g[1]])} | "
                    f"{rate(scaled['retained'])} | {scaled['erase_seconds']:.1f} |"
                )
            ret = " / ".join(rate(alone[f"retained_after_{n}"]) for n in g)
            lines.append(
                f"| {method} | {key} | one at a time | {rate(alone[g[0]])} | {rate(alone[g[1]])} | {ret} | {alone['erase_seconds']:.1f} |"
            )
    lines += ["", "Differences between 'together' and 'one at a time' beyond the 95% intervals (non-overlapping):", ""]
    found = False
    for name, r in rows.items():
        g = name.split("/")[1].split("+")
        for c in g:
            b = Rate(r["alone"][c]["k"], r["alone"][c]["n"])
            for mode, label in (("together", "together"), ("together-scaled", f"together ({len(g)} x steps)")):
                if mode not in r:
                    continue
                a = Rate(r[mode][c]["k"], r[mode][c]["n"])
                if not overlap(a, b):
                    found = True
                    lines.append(f"- {name}, {c}: {label} {a} vs alone {b}")
    if not found:
        lines.append("- none: at these counts every pair of rates overlaps.")
    write_results("multi_concept", {"settings": vars(args), "original": original, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
