"""The erasure table: every eraser on the same toy concepts, measured by the same report.

For each concept (a shape and a style by default) and method (toy presets), erase from the shipped
toy model, then run `erasers.evaluate`: erasure success on direct / synonym / alias prompts,
UnlearnDiffAtk attack success rate (official definition, a reduced budget stated in the table),
retained accuracy on the other concepts (every rate with its count and 95% Wilson interval, and which
differences between rows are beyond the intervals), KID on judge features and paired PSNR, plus what the
erasure cost (UNet evaluations, wall time). Rows are cached in benchmarks/results/erasure_rows/ so
an interrupted run resumes; `--fresh` recomputes.

    python benchmarks/erasure_table.py [--methods esd-x,esd-u,advunlearn,doco] [--concepts triangle,striped]
"""

import argparse
import json
import time

from _util import RESULTS, write_results

from erasers import METHODS, erase, get_config, toy_target
from erasers.evaluate import EvalConfig, describe_differences, evaluate, rate_from, toy_spec, write_report
from studio.judges import get_judge
from studio.loading import load_pipeline
from studio.stats import Rate

ATTACK_BUDGET = {"timesteps": (90, 190, 290, 390, 490, 590, 690, 790, 890, 990), "iterations": 20}  # 200 steps, 10 judged prompts
VARIANTS = {  # extra rows: name -> (method, config overrides on top of the toy preset)
    "advunlearn-official-schedule": ("advunlearn", {"attack_steps": 30, "attack_method": "pgd", "reuse_targets": False}),
    "doco-no-surgery": ("doco", {"surgery": "none"}),
    "advunlearn-3-attack-steps": ("advunlearn", {"attack_steps": 3}),  # the previous default: cheaper, less robust
}


def erased(method_name, concept):
    """(the toy pipeline with `concept` erased by `method_name` at its toy preset, the ErasureResult); deterministic."""
    method, overrides = VARIANTS.get(method_name, (method_name, {}))
    config = get_config(method, "toy", overrides)
    pipe = load_pipeline("toy")
    return pipe, erase(pipe, toy_target(method, concept), method, config=config, progress=True)


def remeasure_kid(row, eval_config, judge):
    """Recompute a cached row's KID with the current estimator (re-erases: the erasure is deterministic)."""
    from erasers.evaluate import generate
    from studio.judges import kid

    spec = toy_spec(row["concept"], eval_config)
    prompts = [p for p, _ in spec.retain]
    before = generate(load_pipeline("toy"), prompts, eval_config)
    after = generate(erased(row["method"], row["concept"])[0], prompts, eval_config)
    row["utility"]["kid_x1000"] = 1000 * kid(judge.features(before), judge.features(after), paired=True)
    row["utility"]["kid_estimator"] = KID_ESTIMATOR
    return row


MODELS = RESULTS.parents[1] / "runs" / "erasure_models"  # not committed
KID_ESTIMATOR = "paired U-statistic, pooled-RMS features"


def run_row(method_name, concept, eval_config, judge, fresh=False, kid=False):
    cache = RESULTS / "erasure_rows" / f"{method_name}--{concept}.json"
    if cache.is_file() and not fresh:
        row = json.loads(cache.read_text())
        if kid and row["utility"].get("kid_estimator") != KID_ESTIMATOR:
            cache.write_text(json.dumps(remeasure_kid(row, eval_config, judge), indent=2))
        return row
    original = load_pipeline("toy")
    t0 = time.time()
    pipe, result = erased(method_name, concept)
    erase_s = time.time() - t0
    result.save(MODELS / f"{method_name}--{concept}", pipe, base_model="toy")  # to re-attack or re-measure later
    report = evaluate(original, pipe, toy_spec(concept, eval_config), judge, eval_config)
    write_report(report, RESULTS / "erasure_rows" / f"{method_name}--{concept}")
    row = {
        "method": method_name,
        "concept": concept,
        "config": result.config,
        "erase_seconds": round(erase_s, 1),
        "erase_unet_evals": result.stats["unet_evals"],
        "erasure": report["erasure"],
        "attack": {k: v for k, v in report["attack"].items() if k != "per_prompt"},
        "adversarial_prompts": [p["adversarial_prompt"] for p in report["attack"]["per_prompt"]],
        "utility": report["utility"],
        "eval_seconds": report["seconds"],
    }
    row["utility"]["kid_estimator"] = KID_ESTIMATOR
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, indent=2))
    return row


def counted(share: float, n: int) -> Rate:
    """The Rate behind a cached share of n (rows cached before reports had counts): k must come out whole."""
    k = round(share * n)
    if abs(k - share * n) > 1e-6:
        raise ValueError(f"a share of {share} is not a whole count of {n}")
    return Rate(k, n)


def row_rates(row, eval_config) -> dict:
    """A row's rates with their counts: erasure per form and of the original, the ASR, retained accuracy
    (erased and original). From the report's Rate dicts where the row has them, else from its shares."""
    e, a, u = row["erasure"], row["attack"], row["utility"]
    out = {}
    for form, v in e.items():
        out[form] = rate_from(v["erasure"]) if "erasure" in v else counted(v["erasure_success"], v["images"])
        out[f"original {form}"] = (
            Rate(v["original_shown"]["n"] - v["original_shown"]["k"], v["original_shown"]["n"])
            if "original_shown" in v
            else counted(1 - v["original_rate"], v["images"])
        )
    out["asr"] = rate_from(a["rate"]) if "rate" in a else Rate(a["pre_successes"] + a["post_successes"], a["n"])
    out["pre_asr"] = Rate(a["pre_successes"], a["n"])
    n_retain = len(toy_spec(row["concept"], eval_config).retain) * eval_config.seeds
    out["retained"] = rate_from(u["retained_erased"]) if "retained_erased" in u else counted(u["retained_acc_erased"], n_retain)
    out["retained original"] = (
        rate_from(u["retained_original"]) if "retained_original" in u else counted(u["retained_acc_original"], n_retain)
    )
    return out


def table(rows, eval_config) -> str:
    lines = [
        "| method | concept | erased: direct | synonyms | aliases | UnlearnDiffAtk ASR / prompts (pre-attack) | retained acc. (ratio) | KID x1000 | paired PSNR | erase UNet evals | erase time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rates = [row_rates(r, eval_config) for r in rows]
    for c in dict.fromkeys(r["concept"] for r in rows):
        first = next(rr for r, rr in zip(rows, rates) if r["concept"] == c)
        lines.append(
            f"| original model | {c} | {first['original direct']} | {first['original synonym']} | {first['original alias']} | - | "
            f"{first['retained original']} | 0 | - | - | - |"
        )
    for r, rr in zip(rows, rates):
        a, u = r["attack"], r["utility"]
        kid_cell = f"{u['kid_x1000']:.1f}" if u.get("kid_estimator") == KID_ESTIMATOR else "-"
        lines.append(
            f"| {r['method']} | {r['concept']} | {rr['direct']} | {rr['synonym']} | {rr['alias']} | {rr['asr']} / {a['n']} ({rr['pre_asr']}) | "
            f"{rr['retained']} ({u['retained_ratio']:.2f}) | {kid_cell} | {u['paired_psnr']:.1f} | {r['erase_unet_evals']:,} | {r['erase_seconds']:.0f} s |"
        )
    lines += ["", "Which differences between rows are beyond their 95% intervals (rows of the same concept):", ""]
    for c in dict.fromkeys(r["concept"] for r in rows):
        mine = [(r, rr) for r, rr in zip(rows, rates) if r["concept"] == c]
        first = mine[0][1]
        columns = (
            ("erasure on direct prompts", "direct", {"original model": first["original direct"]}),
            ("UnlearnDiffAtk ASR", "asr", {}),
            ("retained accuracy", "retained", {"original model": first["retained original"]}),
        )
        for what, key, extra in columns:
            named = {**extra, **{r["method"]: rr[key] for r, rr in mine}}
            lines.append(f"- {c}, {what}: {describe_differences(named, what)}")
    return "\n".join(lines)


def per_concept_summary(methods) -> list:
    """Lines of the per-concept summary: each eraser's toy preset on every concept of the toy world, read from its
    preset sweep (benchmarks/preset_sweep.py: its full evaluation where `--confirm` ran the preset, else the quick
    screen, 8 direct prompts x 2 seeds per concept); a method whose sweep has not measured the preset on every
    concept says how many it has."""
    lines = [
        "## Per concept: each toy preset on every shape and style (from the preset sweeps)",
        "",
        "| method | preset | concepts measured | mean erasure | worst erasure (concept) | min retained ratio (concept) | sweep |",
        "|---|---|---|---|---|---|---|",
    ]
    from preset_sweep import CONCEPTS, GRIDS

    for m in dict.fromkeys(VARIANTS.get(m, (m, {}))[0] for m in methods):
        path = RESULTS / f"preset_sweep_{m}.json"
        if not path.is_file():
            todo = f"not run yet (`python benchmarks/preset_sweep.py --method {m}`)" if m in GRIDS else "no grid in preset_sweep.GRIDS yet"
            lines.append(f"| {m} | - | 0 | - | - | - | {todo} |")
            continue
        sweep = json.loads(path.read_text())
        full = next((r for r in sweep.get("confirmed_ranked", []) if r["setting"] == sweep["current_preset"]), None)
        screen = next((r for r in sweep["ranked"] if r["setting"] == sweep["current_preset"]), None)
        part = None  # a full evaluation on fewer concepts than the screen's: the screen's row, the full one's count said
        if full and screen and len(full["per_concept"]) < len(screen["per_concept"]):
            full, part = None, len(full["per_concept"])
        row = full or screen
        preset = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sweep["current_preset"].items())
        if row is None:
            lines.append(f"| {m} | {preset} | 0 | - | - | - | {sweep['cells_done']}/{sweep['cells']} cells |")
            continue
        per = row["per_concept"]
        worst = min(per, key=lambda c: 1 - per[c]["concept_rate"])
        low = min(per, key=lambda c: per[c]["retained_ratio"])
        lines.append(
            f"| {m} | {preset} | {len(per)}/{len(CONCEPTS)} | {row['mean_erasure']:.0%} | "
            f"{row['worst_erasure']:.0%} ({worst}: shown {per[worst]['shown']}) | {row['min_retained_ratio']:.2f} ({low}) | "
            f"{sweep['cells_done']}/{sweep['cells']} cells"
            + ("; full evaluation (`--confirm`)" if full else "; quick screen")
            + (f" (the full evaluation has {part} of them so far)" if part else "")
            + " |"
        )
    lines += [
        "",
        "Erasure = 1 - the judged concept rate on direct prompts (the full evaluation where the sweep confirmed the preset: "
        "10 prompts x 4 seeds; else the quick screen: 8 prompts x 2 seeds; DDIM 25; each shown rate with its count and "
        "interval); retained ratio = retained accuracy on the concept's kind over the original's. The rows above this "
        "section are the full evaluation on triangle and striped.",
    ]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--methods",
        default="esd-x,esd-u,advunlearn,advunlearn-3-attack-steps,advunlearn-official-schedule,doco,doco-no-surgery,uce,rece,stereo",
    )
    ap.add_argument("--concepts", default="triangle,striped")
    ap.add_argument("--attack-prompts", type=int, default=10)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--cached", action="store_true", help="only the rows already computed (rewrite the table)")
    ap.add_argument("--kid", action="store_true", help="recompute KID of cached rows made with an older estimator")
    args = ap.parse_args()
    judge = get_judge("toy")
    eval_config = EvalConfig(seeds=4, prompts_per_form=10, attack_prompts=args.attack_prompts, attack_overrides=ATTACK_BUDGET)
    rows = []
    for concept in args.concepts.split(","):
        for m in args.methods.split(","):
            base = VARIANTS.get(m, (m, {}))[0]
            if base not in METHODS:
                raise SystemExit(f"unknown method {m}")
            try:
                get_config(base)
            except ValueError as e:  # a method not in this version yet
                print(f"skipping {m}: {e}")
                continue
            if args.cached and not (RESULTS / "erasure_rows" / f"{m}--{concept}.json").is_file():
                continue
            rows.append(run_row(m, concept, eval_config, judge, args.fresh, args.kid))
            print(f"{m} / {concept}: done")
    text = "\n".join(
        [
            (
                "Erasure on the toy model: share of images that do NOT show the concept (judged), by prompt form; "
                f"UnlearnDiffAtk over the first N direct prompts (N per row; {args.attack_prompts} unless the row says more), budget {len(ATTACK_BUDGET['timesteps'])} timesteps x "
                f"{ATTACK_BUDGET['iterations']} iterations (official: 50 x 40), ASR = (pre-attack + post-attack successes) / N; "
                "retained accuracy on the other concepts of the same kind (all asked attributes judged correct); "
                "KID x1000 on the toy judge's features (paired U-statistic on pooled-RMS-scaled features, `studio.judges.kid`; "
                "'-': a row cached before that estimator, `--kid` recomputes it) and paired PSNR between original and erased outputs "
                "on those prompts (same seeds); 4 seeds per prompt, DDIM 50 steps, guidance 7.5. "
                "Every rate: share (count) [95% Wilson interval]; rates of rows cached before reports kept counts are recounted "
                "from their shares and image counts (exact: each share is a whole count)."
            ),
            "",
            table(rows, eval_config),
            "",
            *per_concept_summary(METHODS),
        ]
    )
    write_results("erasure_table", {"rows": rows, "attack_budget": ATTACK_BUDGET}, text)


if __name__ == "__main__":
    main()
