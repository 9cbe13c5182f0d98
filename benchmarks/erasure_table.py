"""The erasure table: every eraser on the same toy concepts, measured by the same report.

For each concept (a shape and a style by default) and method (toy presets), erase from the shipped
toy model, then run `erasers.evaluate`: erasure success on direct / synonym / alias prompts,
UnlearnDiffAtk attack success rate (official definition, a reduced budget stated in the table),
retained accuracy on the other concepts, KID on judge features and paired PSNR, plus what the
erasure cost (UNet evaluations, wall time). Rows are cached in benchmarks/results/erasure_rows/ so
an interrupted run resumes; `--fresh` recomputes.

    python benchmarks/erasure_table.py [--methods esd-x,esd-u,advunlearn,doco] [--concepts triangle,striped]
"""

import argparse
import json
import time

from _util import RESULTS, write_results
from erasers import METHODS, Concept, erase, get_config
from erasers.evaluate import EvalConfig, evaluate, toy_spec, write_report
from studio.judges import get_judge
from studio.loading import load_pipeline
from studio.toyworld.captions import erasure_prompts


ATTACK_BUDGET = {"timesteps": (90, 190, 290, 390, 490, 590, 690, 790, 890, 990), "iterations": 20}  # 200 steps, 10 judged prompts
VARIANTS = {  # extra rows: name -> (method, config overrides on top of the toy preset)
    "advunlearn-official-schedule": ("advunlearn", {"attack_steps": 30, "attack_method": "pgd", "reuse_targets": False}),
    "doco-no-surgery": ("doco", {"surgery": "none"}),
}


def run_row(method_name, concept, eval_config, judge, fresh=False):
    cache = RESULTS / "erasure_rows" / f"{method_name}--{concept}.json"
    if cache.is_file() and not fresh:
        return json.loads(cache.read_text())
    method, overrides = VARIANTS.get(method_name, (method_name, {}))
    config = get_config(method, "toy", overrides)
    pipe, original = load_pipeline("toy"), load_pipeline("toy")
    t0 = time.time()
    if method == "doco":  # DoCo needs anchors: "a triangle" -> "a square" plus anchor captions (erasers.doco.toy_concept)
        from erasers.doco import toy_concept

        target = toy_concept(concept)
    else:
        target = Concept(erasure_prompts(concept), name=concept)
    result = erase(pipe, target, method, config=config, progress=True)
    erase_s = time.time() - t0
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
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, indent=2))
    return row


def table(rows, original_rates) -> str:
    lines = [
        "| method | concept | erased: direct | synonyms | aliases | UnlearnDiffAtk ASR (pre) | retained acc. (ratio) | paired PSNR | erase UNet evals | erase time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, rates in original_rates.items():
        lines.append(f"| original model | {c} | {1 - rates['direct']:.0%} | {1 - rates['synonym']:.0%} | {1 - rates['alias']:.0%} | - | 100% | - | - | - |")
    for r in rows:
        e, a, u = r["erasure"], r["attack"], r["utility"]
        lines.append(
            f"| {r['method']} | {r['concept']} | {e['direct']['erasure_success']:.0%} | {e['synonym']['erasure_success']:.0%} | "
            f"{e['alias']['erasure_success']:.0%} | {a['asr']:.0%} ({a['pre_asr']:.0%}) | {u['retained_acc_erased']:.0%} ({u['retained_ratio']:.2f}) | "
            f"{u['paired_psnr']:.1f} | {r['erase_unet_evals']:,} | {r['erase_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", default="esd-x,esd-u,advunlearn,advunlearn-official-schedule,doco,doco-no-surgery")
    ap.add_argument("--concepts", default="triangle,striped")
    ap.add_argument("--attack-prompts", type=int, default=10)
    ap.add_argument("--fresh", action="store_true")
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
            rows.append(run_row(m, concept, eval_config, judge, args.fresh))
            print(f"{m} / {concept}: done")
    original = {}
    for r in rows:
        original.setdefault(r["concept"], {f: v["original_rate"] for f, v in r["erasure"].items()})
    text = "\n".join(
        [
            "Erasure on the toy model: share of images that do NOT show the concept (judged), by prompt form; "
            f"UnlearnDiffAtk over {args.attack_prompts} direct prompts, budget {len(ATTACK_BUDGET['timesteps'])} timesteps x "
            f"{ATTACK_BUDGET['iterations']} iterations (official: 50 x 40), ASR = (pre-attack + post-attack successes) / N; "
            "retained accuracy on the other concepts of the same kind (all asked attributes judged correct); "
            "paired PSNR between original and erased outputs on those prompts (same seeds); 4 seeds per prompt, DDIM 50 steps, guidance 7.5. "
            "The rows' JSON also holds KID on judge features; the rows of this table were computed partly before the paired, "
            "scale-free KID estimator (studio.judges.kid), so the column is left out until a --fresh run.",
            "",
            table(rows, original),
        ]
    )
    write_results("erasure_table", {"rows": rows, "attack_budget": ATTACK_BUDGET}, text)


if __name__ == "__main__":
    main()
