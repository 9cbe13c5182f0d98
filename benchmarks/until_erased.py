"""Erase until erased against the fixed toy preset, per concept, on the same full evaluation (issue 16).

For each (eraser, concept) cell: erase with the toy preset, its budget raised to a ceiling, and the stop rule
`toy_stop_when(concept, target_rate=0.05, min_retained=0.9, check_every=N)` (erasers.stopping: 8 held-in check
prompts x 2 seeds of the concept, 2 held-in prompts x 2 seeds of each other concept of its kind for the guard,
DDIM 20 steps; none of those prompts or seeds is the evaluation's), then judge the result with the full
evaluation of `preset_sweep.py --confirm` (10 direct prompts x 4 seeds; 10 retain prompts x 4 seeds of each other
concept; DDIM 25). The fixed preset's row is the same evaluation of the preset, from the sweep's `--confirm`
cells (run `preset_sweep.py --method M --confirm 1` first where it is missing).

The ceiling is the largest budget of the method's sweep grid (esd-x: 4 x its preset, as the first `--until` runs)
and the checks come every ceiling / 20 steps, so a run can stop at any of 20 points before its ceiling.

Each cell is written to `results/until_erased_cells/<method>/<concept>.json` when done; a killed cell resumes
from its checkpoint (`results/until_erased_cells/<method>/<concept>.run/`, not committed), so the whole
benchmark resumes where it stopped. Cost is counted in UNet evaluations (training / checks), the machine-free
measure, and seconds on one thread.

    python benchmarks/until_erased.py --methods esd-x --concepts circle,square   # run or resume these cells
    python benchmarks/until_erased.py --report                                  # the table from the cells done
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import preset_sweep as sweep

RESULTS = Path(__file__).resolve().parent / "results"
CELLS = RESULTS / "until_erased_cells"
# method -> (ceiling, check every): the ceiling is the sweep grid's largest budget (esd-x: 4 x the preset's 50)
PLAN = {"esd-x": (200, 10), "esd-u": (400, 20), "advunlearn": (300, 15), "doco": (1000, 50)}
TARGET, GUARD = 0.05, 0.9


def cell_path(method: str, concept: str) -> Path:
    return CELLS / method / f"{concept}.json"


def preset_setting(method: str) -> dict:
    """The toy preset's swept fields and budget, as the sweep's `--confirm` cells spell them."""
    return sweep.confirm_spelling(method, sweep.current_setting(method), sweep.confirmed_settings(method))


def run_cell(method: str, concept: str, judge) -> dict:
    from erasers import erase, get_config, toy_target
    from erasers.stopping import toy_stop_when
    from studio.checkpoint import atomic_write_text
    from studio.loading import load_pipeline

    ceiling, every = PLAN[method]
    run_dir = CELLS / method / f"{concept}.run"
    pipe = load_pipeline("toy")
    config = get_config(method, "toy", {"iterations": ceiling})
    stop = toy_stop_when(concept, TARGET, GUARD, every)
    t0 = time.time()
    result = erase(pipe, toy_target(method, concept), method, config=config, stop_when=stop, checkpoint_dir=run_dir, progress=False)
    erase_seconds = time.time() - t0  # of this process (a resumed cell: the run's own total is stats["seconds"])
    s = result.stats["stop"]
    out = {
        "method": method,
        "concept": concept,
        "ceiling": ceiling,
        "check_every": every,
        "target_rate": TARGET,
        "min_retained": GUARD,
        "reason": s["reason"],
        "step": s["step"],
        "kept_step": s["kept_step"],
        "checks": [
            {k: c[k] for k in ("step", "shown", "n", "retained_k", "retained_n", "retained_ratio", "seconds") if k in c}
            for c in s["checks"]
        ],
        "unet_evals": result.stats.get("unet_evals"),
        "check_unet_evals": s["unet_evals"],
        "check_seconds": s["seconds"],
        "seconds": round(result.stats.get("seconds", erase_seconds), 1),
        **sweep.full_eval(pipe, concept, judge),
    }
    out["eval_seconds"] = round(time.time() - t0 - erase_seconds, 1)
    atomic_write_text(cell_path(method, concept), json.dumps(out, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def fixed_row(method: str, concept: str):
    """The fixed preset's criterion row (`preset_sweep.row_of`) from the sweep's confirm cell, with its counts and
    cost; None where the preset was not evaluated in full on `concept`."""
    setting = preset_setting(method)
    path, base = sweep.confirm_path(method, setting, concept), sweep.original_confirm_path(concept)
    if not path.is_file() or not base.is_file():
        return None
    m = json.loads(path.read_text())
    row = sweep.row_of(setting, concept, m, json.loads(base.read_text()), m["seconds"])
    return {**row, "shown_k": m["shown"], "n": m["n"], "unet_evals": m.get("unet_evals")}


def report(methods, concepts) -> dict:
    from studio.stats import Rate, overlap

    lines = [
        "# Erase until erased vs the fixed toy preset, per concept (toy model)",
        "",
        f"Until: the toy preset with its budget raised to a ceiling and `stop_when` target {TARGET:.0%} on held-in check prompts, guard "
        f"retained >= {GUARD:.0%} of the original's (the studio's `--until {TARGET}`): 8 held-in prompts x 2 seeds of the concept and 2 x 2 "
        "of each other concept of its kind per check, DDIM 20, seeds from 1000 (the evaluation's prompts and seeds are never used). "
        "Both rows judged by the same full evaluation (10 direct prompts x 4 seeds; retained on 10 prompts x 4 seeds of each other concept "
        "of its kind, DDIM 25; the toy judge). One training seed per cell. `*` marks an until / fixed difference in concept shown beyond "
        "both 95% intervals. UNet evaluations are the machine-free cost (training + checks; the final evaluation not counted in either); "
        "seconds on one thread of a 2-core CPU with two jobs running.",
        "",
    ]
    data = {"target_rate": TARGET, "min_retained": GUARD, "plan": PLAN, "cells": []}
    for method in methods:
        ceiling, every = PLAN[method]
        setting = preset_setting(method)
        lines += [
            f"## {method} (fixed: {sweep.fmt_setting(setting)}; until: ceiling {ceiling}, checked every {every})",
            "",
            "| concept | until: stopped at step (kept) | checks | UNet evals until: training + checks | fixed: UNet evals | "
            "until: shown, retained ratio | fixed: shown, retained ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        done = []
        for concept in concepts:
            path = cell_path(method, concept)
            if not path.is_file():
                continue
            c = json.loads(path.read_text())
            row = sweep.row_of({}, concept, c, json.loads(sweep.original_confirm_path(concept).read_text()), c.get("seconds"))
            f = fixed_row(method, concept)
            differs = f is not None and not overlap(Rate(c["shown"], c["n"]), Rate(f["shown_k"], f["n"]))
            until = f"{'*' if differs else ''}{row['shown']}, {row['retained_ratio']:.2f}"
            lines.append(
                f"| {concept} | {c['reason']} at {c['step']} ({c['kept_step']}) | {len(c['checks'])} | "
                f"{c['unet_evals'] - c['check_unet_evals']:,} + {c['check_unet_evals']:,} = {c['unet_evals']:,} | "
                + (f"{f['unet_evals']:,} | {until} | {f['shown']}, {f['retained_ratio']:.2f} |" if f else f"- | {until} | not evaluated |")
            )
            done.append({**c, "retained_ratio": row["retained_ratio"], "keeps_bar": sweep.keeps_bar(row, GUARD), "fixed": f})
        if done:
            erased = [1 - d["shown"] / d["n"] for d in done]
            fixed = [1 - d["fixed"]["concept_rate"] for d in done if d["fixed"]]
            cost = sum(d["unet_evals"] for d in done) / max(1, sum(d["fixed"]["unet_evals"] for d in done if d["fixed"]))
            stops = {r: sum(d["reason"] == r for d in done) for r in ("erased", "utility", "budget")}
            lines += [
                "",
                f"{len(done)} concepts: mean erasure until {sum(erased) / len(erased):.0%}, worst {min(erased):.0%}"
                + (f"; fixed {sum(fixed) / len(fixed):.0%}, worst {min(fixed):.0%}" if len(fixed) == len(done) else "")
                + f". Stopped: {stops['erased']} erased, {stops['utility']} by the guard (restored), {stops['budget']} at the ceiling. "
                f"UNet evaluations, until / fixed, summed: {cost:.2f}x. Retained bar (>= {GUARD:.0%} of the original's, beyond the "
                f"interval, on the full evaluation) kept: until {sum(d['keeps_bar'] for d in done)}/{len(done)}"
                + (f", fixed {sum(sweep.keeps_bar(d['fixed'], GUARD) for d in done)}/{len(done)}." if len(fixed) == len(done) else "."),
            ]
        lines.append("")
        data["cells"] += done
    return data, "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(PLAN), help="default: %(default)s")
    ap.add_argument("--concepts", default=",".join(sweep.CONCEPTS), help="default: every shape and every style")
    ap.add_argument("--report", action="store_true", help="write the table from the cells done, run nothing")
    ap.add_argument("--name", default="until_erased")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()]
    if unknown := [c for c in concepts if c not in sweep.CONCEPTS]:
        raise SystemExit(f"--concepts: {', '.join(unknown)} not toy concepts; choose among {', '.join(sweep.CONCEPTS)}")
    for m in methods:
        if m not in PLAN:
            raise SystemExit(f"--methods: {m!r} has no until plan; choose among {', '.join(PLAN)}")
    if not args.report:
        import torch

        from studio.judges import get_judge

        torch.manual_seed(0)

        judge = get_judge("toy")
        for method in methods:
            for concept in concepts:
                if cell_path(method, concept).is_file():
                    continue
                print(f"{method} / {concept}: erasing until erased ...", flush=True)
                c = run_cell(method, concept, judge)
                print(f"  {c['reason']} at step {c['step']} (kept {c['kept_step']}), shown {c['shown']}/{c['n']}", flush=True)
    from _util import write_results

    everything = [m for m in PLAN if (CELLS / m).is_dir()]
    data, table = report(everything, sweep.CONCEPTS)
    write_results(args.name, data, table)


if __name__ == "__main__":
    main()
