"""The sweep that chose DoCo's toy preset (`erasers.doco.TOY_PRESETS["doco"]`).

Criterion: the largest erasure (the mean erasure success over direct, synonym and alias prompts) among the
settings whose retained accuracy on the other concepts of the same kind stays >= 90% of the original model's;
ties go to the cheaper run (fewer UNet evaluations).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/doco_sweep.py --stage 1     # learning rate x budget
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/doco_sweep.py --stage 2     # around the best of stage 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/doco_sweep.py --table       # rewrite the markdown only

Every run is checkpointed under runs/doco_sweep/ and appended to benchmarks/results/doco_sweep.jsonl, so a
killed sweep continues where it stopped. The anchor images are generated once per anchor setting and copied
into each run's checkpoint folder (DoCo reads them back from there instead of generating them again).
The evaluation here is the robustness report without the attack (erasure per prompt form and retained
accuracy), at 25 sampler steps and 2 seeds per prompt; the results table (doco_table.py) runs the full one.
"""

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "doco_sweep"
JSONL = RESULTS / "doco_sweep.jsonl"
MD = RESULTS / "doco_sweep.md"

BASE = {"iterations": 300, "warmup_steps": 100, "num_anchor_images": 256, "anchor_batch_size": 64}
STAGE1 = [{**BASE, "lr": lr, "iterations": it, "warmup_steps": wu} for lr in (6e-6, 3e-5, 1.25e-4) for it, wu in ((300, 100), (600, 200))]


def stage2(best: dict) -> list:
    return [
        {**best, "surgery": "pcgrad"},
        {**best, "surgery": "none"},
        {**best, "surgery_lambda": 0.5},
        {**best, "d_lr": 5e-4},
        {**best, "d_blocks": 2},
        {**best, "batch_size": 4},
    ]


def eval_config():
    from erasers.evaluate import EvalConfig

    return EvalConfig(seeds=2, prompts_per_form=10, retain_prompts_per_concept=4, attack="none", num_inference_steps=25)


def judged(pipe, spec, judge, ecfg) -> dict:
    """Erasure success per form and retained accuracy (the evaluation's definitions), for one pipe."""
    from erasers.evaluate import _all_match, _generate

    out = {}
    for form, prompts in spec.forms.items():
        out[form] = float(1 - judge.shows(_generate(pipe, prompts, ecfg), spec.concept).mean())
    prompts = [p for p, _ in spec.retain]
    asked = [a for _, a in spec.retain for _ in range(ecfg.seeds)]
    preds = judge.predict(_generate(pipe, prompts, ecfg))
    out["retained"] = float(np.mean([_all_match(p, a) for p, a in zip(preds, asked)]))
    return out


def run_id(concept: str, anchor: str, config: dict) -> str:
    return hashlib.sha1(json.dumps([concept, anchor, config], sort_keys=True).encode()).hexdigest()[:10]


def done_runs() -> dict:
    if not JSONL.is_file():
        return {}
    return {r["id"]: r for r in map(json.loads, JSONL.read_text().splitlines())}


def run(concept: str, anchor: str | None, overrides: dict, judge, original: dict) -> dict:
    from erasers import erase, get_config
    from erasers.doco import ANCHOR_CACHE, anchor_latents, toy_concept, training_pairs
    from erasers.evaluate import toy_spec
    from studio.loading import load_pipeline

    rid = run_id(concept, anchor, overrides)
    if rid in done_runs():
        return done_runs()[rid]
    toy = toy_concept(concept, anchor)
    config = get_config("doco", "official", overrides)
    folder = RUNS / rid
    folder.mkdir(parents=True, exist_ok=True)
    # one shared set of anchor images per anchor setting
    key = hashlib.sha1(json.dumps([toy.anchors, config.num_anchor_images, config.anchor_steps, config.anchor_guidance, config.seed]).encode()).hexdigest()[:10]
    shared = RUNS / f"anchors-{key}.safetensors"
    if not shared.is_file():
        anchor_latents(load_pipeline("toy", device="cpu"), [a for a, _ in training_pairs(toy)], config, cache=shared)
    if not (folder / ANCHOR_CACHE).is_file():
        shutil.copy(shared, folder / ANCHOR_CACHE)
    pipe = load_pipeline("toy", device="cpu")
    t0 = time.time()
    result = erase(pipe, toy, "doco", config=config, checkpoint_dir=folder, progress=True)
    train_s = time.time() - t0
    ecfg = eval_config()
    scores = judged(pipe, toy_spec(toy.name, ecfg), judge, ecfg)
    record = {
        "id": rid,
        "concept": toy.name,
        "anchor": toy.anchors[0],
        "overrides": overrides,
        "erasure": {f: scores[f] for f in ("direct", "synonym", "alias")},
        "erasure_mean": float(np.mean([scores[f] for f in ("direct", "synonym", "alias")])),
        "retained": scores["retained"],
        "retained_original": original["retained"],
        "retained_ratio": scores["retained"] / max(original["retained"], 1e-9),
        "unet_evals": result.stats["unet_evals"],
        "train_seconds": round(train_s, 1),
        "final_d_loss": result.stats["final_loss"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with JSONL.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def original_scores(concept: str, judge) -> dict:
    from erasers.evaluate import toy_spec
    from studio.loading import load_pipeline

    path = RUNS / f"original-{concept}.json"
    if path.is_file():
        return json.loads(path.read_text())
    ecfg = eval_config()
    scores = judged(load_pipeline("toy", device="cpu"), toy_spec(concept, ecfg), judge, ecfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores))
    return scores


def best(records: list) -> dict | None:
    ok = [r for r in records if r["retained_ratio"] >= 0.9]
    return max(ok, key=lambda r: (round(r["erasure_mean"], 4), -r["unet_evals"])) if ok else None


def write_table() -> None:
    records = list(done_runs().values())
    lines = [
        "# DoCo toy-world sweep",
        "",
        "Generated by `benchmarks/doco_sweep.py` (toy model, CPU). Erasure success = share of images of the concept's prompts",
        "that the judge does NOT read as the concept (10 prompts per form x 2 seeds, 25 DDIM steps, CFG 7.5); retained = share",
        "of the other concepts' images whose asked attributes all match. Overrides are on top of the official defaults",
        "(`DoCoConfig()`); lr is before `scale_lr` (x batch size). Criterion: max mean erasure with retained ratio >= 0.90.",
        "",
        "| concept | overrides | direct | synonyms | aliases | mean | retained (orig.) | ratio | UNet evals | train s | D loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        e = r["erasure"]
        ov = ", ".join(f"{k}={v}" for k, v in r["overrides"].items() if k not in ("anchor_batch_size",))
        lines.append(
            f"| {r['concept']} | {ov} | {e['direct']:.0%} | {e['synonym']:.0%} | {e['alias']:.0%} | {r['erasure_mean']:.0%} | "
            f"{r['retained']:.0%} ({r['retained_original']:.0%}) | {r['retained_ratio']:.2f} | {r['unet_evals']} | {r['train_seconds']:.0f} | "
            f"{r['final_d_loss']:.3f} |"
        )
    for concept in sorted({r["concept"] for r in records}):
        b = best([r for r in records if r["concept"] == concept])
        if b:
            lines += ["", f"Best for {concept}: `{json.dumps(b['overrides'])}` (mean erasure {b['erasure_mean']:.0%}, ratio {b['retained_ratio']:.2f})."]
    MD.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=[1, 2, 3])
    p.add_argument("--concept", default="triangle")
    p.add_argument("--anchor", default=None)
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    if args.stage:
        from studio.judges import get_judge

        judge = get_judge("toy")
        original = original_scores(args.concept, judge)
        if args.stage == 1:
            grid = STAGE1
        else:
            stage1 = [r for r in done_runs().values() if r["concept"] == args.concept and r["overrides"] in STAGE1]
            b = best(stage1)
            if b is None:
                raise SystemExit("no stage-1 run keeps retained accuracy >= 90%; widen stage 1 first")
            grid = stage2(b["overrides"])
        for overrides in grid:
            r = run(args.concept, args.anchor, overrides, judge, original)
            print(json.dumps({k: r[k] for k in ("overrides", "erasure", "retained_ratio", "train_seconds")}), flush=True)
            write_table()
    write_table()


if __name__ == "__main__":
    main()
