"""Toy presets chosen across concepts: sweep an eraser's toy-preset parameters over every shape and every style.

The toy presets were chosen on two concepts (triangle, striped) and do not carry over (issue 16: esd-x's preset
erases 90% of triangles but 2.5% of circles). This sweep tries each setting of a small grid on every shape and
every style concept of the toy world and picks the setting by one criterion:

    the worst concept's erasure on direct prompts (1 - concept shown), among the settings whose retained
    accuracy is at least `--keep` (0.9) of the original's on every concept; ties go to the better mean erasure,
    then to the smaller budget.

The bar is read with its interval: a concept fails it only when its retained rate is below `--keep` x the
original's beyond the rate's 95% Wilson interval (`keeps_bar`). A deliberate difference from the plain reading:
on the quick evaluation's 16-32 retain images the point rule rejected every setting of esd-x and uce, the current
presets and ratios of 0.87 included, which is noise, not evidence. The screen's best settings and the current
preset are then evaluated in full (`--confirm K`: 4 seeds x 10 direct prompts, 10 retain prompts x 4 seeds of each
other concept, 80-120 retain images) and the preset is chosen on those numbers, with the same criterion.

A cell is one (setting without its budget, concept) run: iterative methods train once to the largest budget and
are judged at every budget on the way (like esd_sweep.py); uce is one edit per setting; rece is judged after
each epoch. Each cell is written to `results/preset_sweep_cells/<method>/` when done, so a sweep killed at any
point resumes where it stopped, and the table can be written from whatever is done (`--report`).

Quick evaluation, cheaper than the studio's (fewer seeds for the sweep; the full evaluation is for the chosen
setting): 8 direct prompts x 2 seeds, DDIM 25 steps for the concept; 4 direct prompts x 2 seeds of every other
concept of its kind for the retained accuracy (judged on its kind and shape/colour, as erasers.evaluate does).
Rates are printed with their count and 95% Wilson interval.

    python benchmarks/preset_sweep.py --method esd-x --plan             # what is left and what it will cost
    python benchmarks/preset_sweep.py --method esd-x                     # run (or resume) every cell, then the table
    python benchmarks/preset_sweep.py --method esd-x --lrs 1e-3 --concepts circle,striped   # a part of it
    python benchmarks/preset_sweep.py --method esd-x --report            # the table from the cells done so far
    python benchmarks/preset_sweep.py --method esd-x --lrs 3e-3          # one setting on every concept first, then
    python benchmarks/preset_sweep.py --method esd-x --prune             # the rest, skipping settings that can no longer win
    python benchmarks/preset_sweep.py --method esd-x --prune --confirm 2 # then the 2 best and the current preset in full
    python benchmarks/preset_sweep.py --method esd-x --confirm 2 --confirm-on circle,square,triangle,star  # half of it

`--prune` skips a setting's remaining cells once every budget of it is out: a measured concept keeps less than
`--keep` of the original's retained accuracy, or its worst erasure so far is already below the worst of the best
complete eligible setting (the concepts not yet measured can only lower a worst). The table gives each setting's
standing, so a pruned sweep says why its choice is final.
"""

import argparse
import hashlib
import itertools
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CELLS = RESULTS / "preset_sweep_cells"
CONCEPTS = ("circle", "square", "triangle", "star", "cross", "solid", "striped", "dotted")  # every shape and every style

# method -> (swept fields and values, the budget field and its values measured along one run)
GRIDS = {
    # esd-x: lr 3e-4 (in the first grid) dropped after its first cell: lr 1e-3 erased 0% of circles at 25, 50 and 100
    # iterations, and 100 steps at 3e-4 move the weights about as far as 30 at 1e-3; 1e-2 tried in its place
    "esd-x": ({"lr": [1e-3, 3e-3, 1e-2]}, ("iterations", [25, 50, 100])),
    "esd-u": ({"lr": [3e-5, 1e-4, 3e-4]}, ("iterations", [100, 200, 400])),
    # the two ESD variants that had no toy preset: the grids of their nearest siblings (esd-x-strict trains a part of
    # esd-x's parameters, esd-all a superset of esd-u's), swept first at the sibling's preset lr
    "esd-x-strict": ({"lr": [1e-3, 3e-3]}, ("iterations", [25, 50, 100])),
    "esd-all": ({"lr": [3e-5, 1e-4]}, ("iterations", [100, 200, 400])),
    "advunlearn": ({"lr": [3e-5, 1e-4, 3e-4]}, ("iterations", [75, 150, 300])),
    "doco": ({"lr": [1e-5, 3e-5, 1e-4]}, ("iterations", [250, 500, 1000])),
    "uce": ({"erase_scale": [0.1, 0.3, 1.0, 3.0]}, None),
    "rece": ({"regular_scale": [1e-3, 1e-1]}, ("epochs", [1, 2, 3])),
    # STE's rounds (erase + concept inversion) are the costly part and kept at the toy preset; REO is swept
    "stereo": ({"reo_lr": [1e-3, 3e-3]}, ("reo_iterations", [25, 50, 100])),
}
# seconds per cell on the shared 2-core CPU (one thread), used by --plan until cells of the method are done:
# training to the largest budget (from esd_sweep / closed_form_speed / doco_sweep timings) + one quick evaluation per budget
PRIOR_SECONDS = {
    "esd-x": 300,
    "esd-u": 1000,
    "esd-x-strict": 300,
    "esd-all": 1000,
    "advunlearn": 1500,
    "doco": 2500,
    "uce": 60,
    "rece": 180,
    "stereo": 1200,
}
ORIGINAL_SECONDS = 60  # the original model's quick evaluation, once per concept
SEEDS, STEPS, DIRECT, RETAIN = 2, 25, 8, 4
# --confirm: the studio's evaluation sizes (erasers.evaluate.EvalConfig: 4 seeds x 10 direct prompts) with 10 retain
# prompts per other concept (120 retain images for a shape, 80 for a style, against the screen's 24 and 16)
CONFIRM_SEEDS, CONFIRM_DIRECT, CONFIRM_RETAIN = 4, 10, 10


def effective_config(method: str, setting: dict) -> dict:
    """The whole config a setting trains with: the toy preset with the setting's fields over it."""
    from dataclasses import asdict

    from erasers import get_config

    return asdict(get_config(method, "toy", dict(setting)))


def confirmed_settings(method: str) -> list:
    """The settings with a full evaluation (`--confirm`) cached, one spelling each: a setting written two ways
    (a field given at its preset value, or left out) is one setting."""
    folder = CELLS / method / "confirm"
    settings, effective = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        setting = json.loads(path.read_text())["setting"]
        full = effective_config(method, setting)
        if full not in effective:
            settings.append(setting)
            effective.append(full)
    return settings


def confirm_spelling(method: str, setting: dict, confirmed: list) -> dict:
    """The spelling among `confirmed` (`confirmed_settings`) of the same config as `setting`, else `setting`:
    so `--confirm` reuses a full evaluation cached under another spelling."""
    full = effective_config(method, setting)
    return next((c for c in confirmed if effective_config(method, c) == full), setting)


def key_of(setting: dict) -> str:
    text = json.dumps(setting, sort_keys=True)
    return (
        "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(setting.items()))
        + "-"
        + hashlib.sha1(text.encode()).hexdigest()[:6]
    )


def current_setting(method: str, grid: dict | None = None, budget=None) -> dict:
    """The toy preset's values of the swept fields and the budget (default: GRIDS[method]'s)."""
    from erasers import get_config

    if grid is None:
        grid, budget = GRIDS[method]
    toy = get_config(method, "toy")
    return {k: getattr(toy, k) for k in list(grid) + ([budget[0]] if budget else [])}


def cells_of(method: str, grid: dict, concepts) -> list:
    """[(setting, concept)] of a sweep: every combination of the grid's values, every concept."""
    names = list(grid)
    settings = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    return [(s, c) for s in settings for c in concepts]


def cell_path(method: str, setting: dict, concept: str) -> Path:
    return CELLS / method / f"{concept}__{key_of(setting)}.json"


def original_path(concept: str) -> Path:
    return CELLS / "original" / f"{concept}.json"


def confirm_path(method: str, setting: dict, concept: str) -> Path:
    """The full evaluation of one setting (its budget included) on one concept (`--confirm`)."""
    return CELLS / method / "confirm" / f"{concept}__{key_of(setting)}.json"


def original_confirm_path(concept: str) -> Path:
    return CELLS / "original" / "confirm" / f"{concept}.json"


# ---------------------------------------------------------------- the criterion


def choose(rows: list, concepts, keep: float = 0.9):
    """(the chosen setting's summary or None, every setting's summary ranked best first).

    `rows`: {"setting", "concept", "concept_rate", "retained_ratio"} per concept and setting (budget included in
    "setting"), with "retained_k", "retained_n" and "original_retained" where counts are known. A setting is
    eligible when it has a row for every concept and every row keeps the bar (`keeps_bar`); the eligible ones
    rank by worst erasure, then mean erasure, then the smaller budget."""
    by = {}
    for r in rows:
        by.setdefault(json.dumps(r["setting"], sort_keys=True), {})[r["concept"]] = r
    ranked = []
    for key, per in by.items():
        setting = json.loads(key)
        complete = all(c in per for c in concepts)
        erasures = [1 - per[c]["concept_rate"] for c in concepts if c in per]
        ratios = [per[c]["retained_ratio"] for c in concepts if c in per]
        ranked.append(
            {
                "setting": setting,
                "eligible": complete and all(keeps_bar(per[c], keep) for c in concepts),
                "complete": complete,
                "worst_erasure": min(erasures) if erasures else None,
                "mean_erasure": sum(erasures) / len(erasures) if erasures else None,
                "min_retained_ratio": min(ratios) if ratios else None,
                "per_concept": {c: per[c] for c in concepts if c in per},
                "below_bar": [c for c in concepts if c in per and not keeps_bar(per[c], keep)],
            }
        )
    budget = lambda s: s.get("iterations", s.get("epochs", 0))
    ranked.sort(key=lambda r: (not r["eligible"], -(r["worst_erasure"] or 0), -(r["mean_erasure"] or 0), budget(r["setting"])))
    best = next((r for r in ranked if r["eligible"]), None)
    for r in ranked:
        r["status"] = standing(r, best, keep)
    return best, ranked


def standing_text(r: dict) -> str:
    """The standing as the table gives it: an ineligible setting names the concepts below the retained bar."""
    below = r.get("below_bar") or []
    return f"{r['status']} ({', '.join(below)} below the bar)" if r["status"] == "ineligible" and below else r["status"]


def keeps_bar(row: dict, keep: float) -> bool:
    """True unless the row's retained accuracy is below `keep` x the original's beyond its 95% interval.

    With counts ("retained_k", "retained_n", "original_retained"), a concept fails only when the Wilson upper
    bound of its retained rate is below keep x the original's rate: at the quick evaluation's 16-32 retain
    images a point ratio of 0.87 is within noise of 1.0 (and the point rule rejected every setting of esd-x and
    uce, the current presets included), so the screen fails a setting only on evidence, and `--confirm` checks
    the candidates again on the full evaluation's larger samples. Without counts: the point ratio >= keep."""
    if all(k in row for k in ("retained_k", "retained_n", "original_retained")) and row["retained_n"]:
        from studio.stats import Rate, below

        return not below(Rate(row["retained_k"], row["retained_n"]), keep * row["original_retained"])
    return row["retained_ratio"] >= keep


def standing(r: dict, best, keep: float) -> str:
    """Where a setting stands: "eligible", "ineligible" (a measured concept keeps less than `keep`), "cannot win"
    (incomplete, but the worst erasure measured so far is already below the best eligible setting's worst: the
    concepts left can only lower its worst), or "open" (incomplete and could still be chosen). The bar: `keeps_bar`."""
    if r["eligible"]:
        return "eligible"
    if any(not keeps_bar(row, keep) for row in r["per_concept"].values()):
        return "ineligible"
    if r["complete"]:
        return "ineligible"
    if best is not None and r["worst_erasure"] is not None and r["worst_erasure"] < best["worst_erasure"]:
        return "cannot win"
    return "open"


def ruled_out(ranked: list, setting: dict) -> bool:
    """True when every budget of `setting` (a cell's setting, without its budget field) is ineligible or cannot win,
    so running the setting's other concepts cannot change the choice (`--prune`)."""
    mine = [r for r in ranked if all(r["setting"].get(k) == v for k, v in setting.items())]
    return bool(mine) and all(r["status"] in ("ineligible", "cannot win") for r in mine)


# ---------------------------------------------------------------- measuring


def quick_eval(pipe, name, judge, seeds: int = SEEDS, direct: int = DIRECT, retain: int = RETAIN) -> dict:
    """Concept shown on direct prompts and retained accuracy on the other concepts of its kind, with counts."""
    import numpy as np

    from erasers.evaluate import EvalConfig, all_match, generate, toy_spec

    cfg = EvalConfig(seeds=seeds, num_inference_steps=STEPS, prompts_per_form=direct, retain_prompts_per_concept=retain)
    spec = toy_spec(name, cfg)
    shown = np.asarray(judge.shows(generate(pipe, spec.forms["direct"], cfg), name), bool)
    preds = judge.predict(generate(pipe, [p for p, _ in spec.retain], cfg))
    asked = [a for _, a in spec.retain for _ in range(seeds)]
    hits = [all_match(p, a) for p, a in zip(preds, asked)]
    return {"shown": int(shown.sum()), "n": len(shown), "retained_k": int(sum(hits)), "retained_n": len(hits)}


def original(concept: str, judge) -> dict:
    path = original_path(concept)
    if path.is_file():
        return json.loads(path.read_text())
    from studio.checkpoint import atomic_write_text
    from studio.loading import load_pipeline

    t0 = time.time()
    out = {**quick_eval(load_pipeline("toy"), concept, judge), "seconds": round(time.time() - t0, 1)}
    atomic_write_text(path, json.dumps(out, indent=1))
    return out


def run_cell(method: str, setting: dict, concept: str, budget, judge) -> dict:
    """Erase `concept` with the toy preset + `setting`, judged at every budget; written to its cell file."""
    from erasers import erase, get_config, toy_target
    from studio.checkpoint import atomic_write_text
    from studio.loading import load_pipeline

    pipe = load_pipeline("toy")
    overrides = dict(setting)
    field, budgets = budget if budget else (None, [None])
    if field:
        overrides[field] = max(budgets)
    config = get_config(method, "toy", overrides)
    measured, t0, eval_seconds = {}, time.time(), [0.0]
    # the budget is the run's last stage (all of it for most methods; STEREO's REO comes after its STE rounds)
    offset = getattr(config, "total_steps", max(budgets) if field else 0) - (max(budgets) if field else 0)

    def at_budget(info):
        b = info["step"] - offset
        if field and info["stage"] == method and b in budgets and b not in measured:
            t = time.time()
            measured[b] = quick_eval(pipe, concept, judge)
            eval_seconds[0] += time.time() - t

    result = erase(pipe, toy_target(method, concept), method, config=config, callback=at_budget, progress=False)
    if not field:
        t = time.time()
        measured[None] = quick_eval(pipe, concept, judge)
        eval_seconds[0] += time.time() - t
    missing = [b for b in budgets if b not in measured]
    if missing:
        raise RuntimeError(f"{method}: no progress event at budget(s) {missing}; cannot judge them")
    out = {
        "method": method,
        "setting": setting,
        "concept": concept,
        "budgets": {str(b): measured[b] for b in budgets},
        "budget_field": field,
        "seconds": round(time.time() - t0, 1),
        "eval_seconds": round(eval_seconds[0], 1),
        "unet_evals": result.stats.get("unet_evals"),
    }
    atomic_write_text(cell_path(method, setting, concept), json.dumps(out, indent=1))
    return out


def original_confirmed(concept: str, judge) -> dict:
    path = original_confirm_path(concept)
    if path.is_file():
        return json.loads(path.read_text())
    from studio.checkpoint import atomic_write_text
    from studio.loading import load_pipeline

    t0 = time.time()
    out = {**full_eval(load_pipeline("toy"), concept, judge), "seconds": round(time.time() - t0, 1)}
    atomic_write_text(path, json.dumps(out, indent=1))
    return out


def full_eval(pipe, concept: str, judge) -> dict:
    return quick_eval(pipe, concept, judge, seeds=CONFIRM_SEEDS, direct=CONFIRM_DIRECT, retain=CONFIRM_RETAIN)


def run_confirm(method: str, setting: dict, concept: str, judge) -> dict:
    """Erase `concept` with the toy preset + `setting` (its budget field included), then the full evaluation."""
    from erasers import erase, get_config, toy_target
    from studio.checkpoint import atomic_write_text
    from studio.loading import load_pipeline

    pipe = load_pipeline("toy")
    config = get_config(method, "toy", dict(setting))
    t0 = time.time()
    result = erase(pipe, toy_target(method, concept), method, config=config, progress=False)
    erase_seconds = time.time() - t0
    out = {
        "method": method,
        "setting": setting,
        "concept": concept,
        **full_eval(pipe, concept, judge),
        "erase_seconds": round(erase_seconds, 1),
        "seconds": round(time.time() - t0, 1),
        "unet_evals": result.stats.get("unet_evals"),
    }
    atomic_write_text(confirm_path(method, setting, concept), json.dumps(out, indent=1))
    return out


def confirm_rows(method: str, settings: list, concepts) -> list:
    """The rows (as rows_of gives them) of the full evaluations done for `settings`."""

    rows = []
    for setting in settings:
        for concept in concepts:
            path, base_path = confirm_path(method, setting, concept), original_confirm_path(concept)
            if not path.is_file() or not base_path.is_file():
                continue
            m, base = json.loads(path.read_text()), json.loads(base_path.read_text())
            rows.append(row_of(setting, concept, m, base, m["seconds"]))
    return rows


def row_of(setting: dict, concept: str, m: dict, base: dict, seconds: float) -> dict:
    """One criterion row from a measurement `m` and the original's `base` (counts as quick_eval gives them)."""
    from studio.stats import Rate

    acc0 = base["retained_k"] / base["retained_n"]
    return {
        "setting": setting,
        "concept": concept,
        "concept_rate": m["shown"] / m["n"],
        "shown": str(Rate(m["shown"], m["n"])),
        "retained": m["retained_k"] / m["retained_n"],
        "retained_rate": str(Rate(m["retained_k"], m["retained_n"])),
        "retained_ratio": (m["retained_k"] / m["retained_n"]) / max(acc0, 1e-9),
        "retained_k": m["retained_k"],
        "retained_n": m["retained_n"],
        "original_retained": acc0,
        "seconds_cell": seconds,
    }


def to_confirm(ranked: list, current: dict, top: int) -> list:
    """The settings `--confirm top` evaluates in full: the `top` best eligible ones of the screen and the current preset."""
    chosen = [r["setting"] for r in ranked if r["eligible"]][:top]
    return chosen + ([current] if current not in chosen else [])


# ---------------------------------------------------------------- plan, run, report


def plan(method, grid, budget, concepts) -> tuple[list, float]:
    """(cells left, estimated seconds for them and the originals not yet judged)."""
    cells = cells_of(method, grid, concepts)
    left = [(s, c) for s, c in cells if not cell_path(method, s, c).is_file()]
    done = [json.loads(p.read_text()) for p in (CELLS / method).glob("*.json")] if (CELLS / method).is_dir() else []
    per_cell = sum(d["seconds"] for d in done) / len(done) if done else PRIOR_SECONDS[method]
    originals = [c for c in concepts if not original_path(c).is_file()]
    return left, len(left) * per_cell + len(originals) * ORIGINAL_SECONDS


def rows_of(method, grid, budget, concepts) -> list:

    rows = []
    for setting, concept in cells_of(method, grid, concepts):
        path = cell_path(method, setting, concept)
        if not path.is_file() or not original_path(concept).is_file():
            continue
        cell, base = json.loads(path.read_text()), json.loads(original_path(concept).read_text())
        for b, m in cell["budgets"].items():
            full = {**setting, **({cell["budget_field"]: int(b)} if cell["budget_field"] else {})}
            rows.append(row_of(full, concept, m, base, cell["seconds"]))
    return rows


def fmt_setting(s: dict) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())


def report(method, grid, budget, concepts, keep, name=None) -> dict:
    from _util import write_results

    rows = rows_of(method, grid, budget, concepts)
    best, ranked = choose(rows, concepts, keep)
    cells = cells_of(method, grid, concepts)
    done = sum(cell_path(method, s, c).is_file() for s, c in cells)
    current = current_setting(method, grid, budget)
    seconds = sum(json.loads(cell_path(method, s, c).read_text())["seconds"] for s, c in cells if cell_path(method, s, c).is_file())
    left, estimate = plan(method, grid, budget, concepts)
    originals = {c: json.loads(original_path(c).read_text()) for c in concepts if original_path(c).is_file()}
    from studio.stats import Rate

    lines = [
        f"# Preset sweep: {method}",
        "",
        f"Grid over the toy preset (now {fmt_setting(current)}, its other fields kept): "
        + "; ".join(f"{k} in {v}" for k, v in grid.items())
        + (f"; {budget[0]} in {budget[1]} (judged along one run)" if budget else "")
        + f". Concepts: {', '.join(concepts)}.",
        (
            f"Quick evaluation: {DIRECT} direct prompts x {SEEDS} seeds for the concept, {RETAIN} prompts x {SEEDS} seeds of each other concept of "
            f"its kind for the retained accuracy, DDIM {STEPS} steps. Criterion: the worst concept's erasure on direct prompts, with retained "
            f">= {keep:.0%} of the original's on every concept (a concept fails only when below it beyond its 95% interval)."
        ),
        (
            f"Cells done: {done} of {len(cells)} ({seconds / 60:.0f} min of CPU, one thread on a shared 2-core machine); left: {len(left)}, "
            f"about {estimate / 60:.0f} min more."
        ),
        "",
        "## Settings (best first)",
        "",
        "| setting | concepts measured | worst erasure | mean erasure | min retained ratio | standing |",
        "|---|---|---|---|---|---|",
    ]
    for r in ranked:
        lines.append(
            f"| {fmt_setting(r['setting'])}{' (current preset)' if r['setting'] == current else ''} | {len(r['per_concept'])}/{len(concepts)} | "
            f"{r['worst_erasure']:.0%} | {r['mean_erasure']:.0%} | {r['min_retained_ratio']:.2f} | {standing_text(r)} |"
        )

    def per_concept(r, title, originals=originals):
        out = [
            f"## {title}: {fmt_setting(r['setting'])}",
            "",
            "| concept | original: shown, retained | concept shown (direct) | erasure | retained | ratio to original |",
            "|---|---|---|---|---|---|",
        ]
        for c, row in r["per_concept"].items():
            o = originals.get(c)
            base = f"{Rate(o['shown'], o['n'])}, {Rate(o['retained_k'], o['retained_n'])}" if o else "-"
            out.append(
                f"| {c} | {base} | {row['shown']} | {1 - row['concept_rate']:.0%} | {row['retained_rate']} | {row['retained_ratio']:.2f} |"
            )
        out += [
            "",
            f"Per-concept summary: mean erasure {r['mean_erasure']:.0%}, worst {r['worst_erasure']:.0%}; min retained ratio {r['min_retained_ratio']:.2f}.",
            "",
        ]
        return out

    lines.append("")
    before = next((r for r in ranked if r["setting"] == current), None)
    if before:
        lines += per_concept(before, "Before: the current toy preset")
    if best:
        lines += per_concept(best, "Chosen by the screen")
    else:
        lines += ["No setting meets the criterion" + (" (the sweep is not complete)." if done < len(cells) else "."), ""]
    confirmed = confirmed_settings(method)
    final, cranked = None, []
    if confirmed:
        crows = confirm_rows(method, confirmed, concepts)
        final, cranked = choose(crows, concepts, keep)
        full_originals = {c: json.loads(original_confirm_path(c).read_text()) for c in concepts if original_confirm_path(c).is_file()}
        cost = sum(r["seconds_cell"] for r in crows) + sum(o["seconds"] for o in full_originals.values())
        lines += [
            "## Confirmed on the full evaluation",
            "",
            f"`--confirm`: each setting trained again at its budget on every concept and judged on {CONFIRM_DIRECT} direct prompts x "
            f"{CONFIRM_SEEDS} seeds, retained on {CONFIRM_RETAIN} prompts x {CONFIRM_SEEDS} seeds of each other concept of its kind "
            f"(DDIM {STEPS} steps); the same criterion and bar. Cost: {cost / 60:.0f} min of CPU (the original's included).",
            "",
            "| setting | concepts measured | worst erasure | mean erasure | min retained ratio | standing |",
            "|---|---|---|---|---|---|",
        ]
        for r in cranked:
            lines.append(
                f"| {fmt_setting(r['setting'])}{' (current preset)' if r['setting'] == current else ''} | {len(r['per_concept'])}/{len(concepts)} | "
                f"{r['worst_erasure']:.0%} | {r['mean_erasure']:.0%} | {r['min_retained_ratio']:.2f} | {standing_text(r)} |"
            )
        lines.append("")
        before_full = next((r for r in cranked if r["setting"] == current), None)
        if before_full:
            lines += per_concept(before_full, "Before, full evaluation: the current toy preset", full_originals)
        if final:
            lines += per_concept(final, "Chosen, full evaluation", full_originals)
        else:
            lines += ["No confirmed setting meets the criterion on every concept.", ""]
    lines += [
        "Standing: eligible (every concept measured, each keeps the retained bar); ineligible (a concept falls below it); "
        "cannot win (not every concept measured, but the worst erasure so far is already below the chosen setting's worst, "
        "and more concepts can only lower it); open (could still be chosen).",
        "",
    ]
    if done < len(cells):
        still = [r for r in ranked if r["status"] == "open"]
        # a setting with no cell done is open too (nothing rules it out); it is not in `ranked`, which has only rows
        measured = {key_of(s) for s, c in cells if cell_path(method, s, c).is_file()}
        unmeasured = {key_of(s) for s, _ in cells} - measured
        lines.append(
            f"Partial sweep: {done} of {len(cells)} cells done; "
            + (
                "no setting left open can change the choice, so the choice is final."
                if best and not still and not unmeasured
                else f"{len(still)} setting(s) still open"
                + (f" and {len(unmeasured)} not measured on any concept" if unmeasured else "")
                + "; `--plan` lists the cells left."
            )
        )
    data = {
        "method": method,
        "grid": grid,
        "budget": budget,
        "concepts": list(concepts),
        "keep": keep,
        "rows": rows,
        "ranked": ranked,
        "chosen": best,
        "confirmed": final,
        "confirmed_ranked": cranked,  # every setting evaluated in full (--confirm), best first
        "current_preset": current,
        "cells_done": done,
        "cells": len(cells),
        "cell_seconds": seconds,
    }
    write_results(name or f"preset_sweep_{method}", data, "\n".join(lines))
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=list(GRIDS), default="esd-x")
    ap.add_argument("--concepts", default=",".join(CONCEPTS), help="default: every shape and every style")
    ap.add_argument("--grid", default=None, help="JSON of swept fields, e.g. '{\"lr\": [1e-3, 3e-3]}' (default: GRIDS[method])")
    ap.add_argument("--lrs", default=None, help="shorthand for the lr values of the grid, e.g. 1e-3,3e-3")
    ap.add_argument("--budgets", default=None, help="the budget field's values, e.g. 25,50,100")
    ap.add_argument("--keep", type=float, default=0.9, help="retained accuracy must stay >= keep x the original's on every concept")
    ap.add_argument("--plan", action="store_true", help="print the cells left and their estimated cost, run nothing")
    ap.add_argument("--report", action="store_true", help="write the table from the cells done, run nothing")
    ap.add_argument(
        "--prune",
        action="store_true",
        help="skip the cells of a setting that can no longer be chosen (a measured concept below --keep, or its worst "
        "erasure so far already below the best complete setting's worst)",
    )
    ap.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="K",
        help="after the sweep, evaluate the K best eligible settings and the current preset in full on every concept (cached)",
    )
    ap.add_argument(
        "--confirm-on",
        default=None,
        metavar="CONCEPTS",
        help="--confirm only these concepts (the settings are still ranked on every concept of the sweep): to split the "
        "full evaluation over processes, e.g. one per core",
    )
    ap.add_argument("--name", default=None, help="results file name (default preset_sweep_<method>)")
    args = ap.parse_args()
    if args.confirm < 0:
        raise SystemExit(f"--confirm must be 0 or more, got {args.confirm}")
    names = lambda text: [c.strip() for c in text.split(",") if c.strip()]  # noqa: E731
    concepts = names(args.concepts)
    confirm_on = names(args.confirm_on) if args.confirm_on else concepts
    if unknown := [c for c in confirm_on if c not in concepts]:
        raise SystemExit(f"--confirm-on names concepts outside the sweep's: {', '.join(unknown)}")
    grid, budget = GRIDS[args.method]
    grid = json.loads(args.grid) if args.grid else dict(grid)
    if args.lrs:
        grid["lr"] = [float(x) for x in args.lrs.split(",")]
    if args.budgets and budget:
        budget = (budget[0], sorted(int(x) for x in args.budgets.split(",")))
    left, estimate = plan(args.method, grid, budget, concepts)
    if args.plan:
        for s, c in left:
            print(f"left: {args.method} {fmt_setting(s)} on {c}")
        total = len(cells_of(args.method, grid, concepts))
        print(f"{len(left)} of {total} cells left; estimated {estimate / 60:.0f} min on this machine (one thread)")
        return
    if not args.report:
        import torch

        from studio.judges import get_judge

        torch.manual_seed(0)
        judge = get_judge("toy")
        for i, (s, c) in enumerate(left):
            if args.prune and ruled_out(choose(rows_of(args.method, grid, budget, concepts), concepts, args.keep)[1], s):
                print(
                    json.dumps({"cell": f"{i + 1}/{len(left)}", "setting": s, "concept": c, "skipped": "cannot change the choice"}),
                    flush=True,
                )
                continue
            original(c, judge)  # the original model's numbers, judged once per concept (when its first cell comes)
            cell = run_cell(args.method, s, c, budget, judge)
            print(
                json.dumps(
                    {"cell": f"{i + 1}/{len(left)}", "setting": s, "concept": c, "seconds": cell["seconds"], "budgets": cell["budgets"]}
                ),
                flush=True,
            )
    if args.confirm and not args.report:
        from studio.judges import get_judge

        judge = get_judge("toy")
        current = current_setting(args.method, grid, budget)
        ranked = choose(rows_of(args.method, grid, budget, concepts), concepts, args.keep)[1]
        confirmed = confirmed_settings(args.method)
        for s in (confirm_spelling(args.method, s, confirmed) for s in to_confirm(ranked, current, args.confirm)):
            for c in confirm_on:
                if confirm_path(args.method, s, c).is_file():
                    continue
                original_confirmed(c, judge)
                cell = run_confirm(args.method, s, c, judge)
                print(
                    json.dumps({"confirm": s, "concept": c, "seconds": cell["seconds"], "shown": cell["shown"], "n": cell["n"]}), flush=True
                )
    if (
        args.name is None
        and not args.grid
        and (grid, budget, tuple(concepts)) != (dict(GRIDS[args.method][0]), GRIDS[args.method][1], tuple(CONCEPTS))
    ):
        # a part of the sweep (--lrs, --budgets or --concepts): the method's table still covers its whole grid and
        # every concept, with the values asked for added, from the cells done (a part's own table: pass --name)
        grid, budget = whole_grid(args.method, grid, budget)
        concepts = list(dict.fromkeys([*CONCEPTS, *concepts]))
        print(f"a part of the sweep ran; preset_sweep_{args.method} is written for the whole grid (pass --name for the part's own table)")
    report(args.method, grid, budget, concepts, args.keep, args.name)


def whole_grid(method: str, grid: dict, budget):
    """GRIDS[method] with the values of `grid` and `budget` added (the same fields)."""
    full, full_budget = GRIDS[method]
    merged = {k: sorted(set(v) | set(grid.get(k, []))) for k, v in full.items()}
    if full_budget and budget:
        full_budget = (full_budget[0], sorted(set(full_budget[1]) | set(budget[1])))
    return merged, full_budget


if __name__ == "__main__":
    main()
