"""Choose DoCo's toy preset (`erasers.doco.TOY_PRESETS["doco"]`): a small sweep on the toy model.

SD's defaults (2000 steps of which 1000 discriminator-only, lr 6e-6 x batch 8, 1000 anchor images) are for an
860M-parameter UNet on a GPU. For each setting and concept (a shape, triangle -> square, and a style,
striped -> solid; `erasers.doco.toy_target`), one run trains to the largest budget and is measured at every
budget on the way (DoCo has no schedule that depends on the total, so step k of a longer run is a run of k steps):

  * erasure: share of images that the judge does NOT read as the concept, on its direct, synonym and alias
    prompts (8 prompts each x 2 seeds, 25 DDIM steps, CFG 7.5); "mean" is over the three forms;
  * retained: share of images of the other concepts' prompts (same kind, 8 prompts each x 2 seeds) judged
    correct on every attribute the prompt asks for, relative to the original model's (the ratio).

The preset is the setting and budget that maximise the mean erasure over the two concepts while both keep
retained >= 90% of the original's; ties go to the smaller budget.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/doco_sweep.py --stage 1    # learning rate x budget
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/doco_sweep.py --stage 2    # surgery, lambda, D lr, D depth, warm-up
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/doco_sweep.py --remeasure # re-judge saved weights (new eval)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/doco_sweep.py              # rewrite the tables only

Runs are checkpointed under runs/doco_sweep/ and every measured point is appended to
benchmarks/results/doco_sweep.jsonl, so a killed sweep continues where it stopped. The anchor images are
generated once per concept and copied into each run's checkpoint folder, where DoCo finds them.
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

CONCEPTS = ("triangle", "striped")
BASE = {"warmup_steps": 100, "num_anchor_images": 256, "anchor_batch_size": 64, "checkpoint_every": 100}
BUDGETS = (100, 200, 400)  # UNet steps after the warm-up, measured in one run each
STAGE1 = [{**BASE, "lr": lr} for lr in (6e-6, 3e-5, 1.25e-4)]  # x batch 8: 4.8e-5, 2.4e-4, 1e-3


def stage2(best: dict) -> list:
    return [
        {**best, "surgery": "pcgrad"},
        {**best, "surgery": "none"},
        {**best, "surgery_lambda": 0.5},
        {**best, "d_lr": 5e-4},
        {**best, "d_blocks": 2},
        {**best, "warmup_steps": 0},
    ]


EVAL_VERSION = 3  # 1: 4 retain prompts per concept (16 images for a style: too coarse at the 0.9 line); 2: 8;
# 3: 8, judged on the erased kind plus shape/colour as erasers.evaluate does (2 also asked for the background,
# which the toy model ignores: chance noise at the 0.9 line). `--remeasure` re-judges the saved weights of 2.


def judged(pipe, name: str, judge, seeds=2, steps=25, n=8, retain=8) -> dict:
    from erasers.evaluate import EvalConfig, all_match, generate, toy_spec

    ecfg = EvalConfig(seeds=seeds, prompts_per_form=n, retain_prompts_per_concept=retain, num_inference_steps=steps)
    spec = toy_spec(name, ecfg)
    out = {form: float(1 - judge.shows(generate(pipe, prompts, ecfg), spec.concept).mean()) for form, prompts in spec.forms.items()}
    asked = [a for _, a in spec.retain for _ in range(ecfg.seeds)]
    preds = judge.predict(generate(pipe, [p for p, _ in spec.retain], ecfg))
    out["retained"] = float(np.mean([all_match(p, a) for p, a in zip(preds, asked)]))
    return out


def key(concept: str, overrides: dict) -> str:
    return hashlib.sha1(json.dumps([concept, overrides, EVAL_VERSION], sort_keys=True).encode()).hexdigest()[:10]


def records(version: int = EVAL_VERSION) -> list:
    rows = [json.loads(line) for line in JSONL.read_text().splitlines()] if JSONL.is_file() else []
    return [r for r in rows if r.get("eval", 1) == version]


def original(concept: str, judge) -> dict:
    from studio.loading import load_pipeline

    path = RUNS / f"original-{concept}-v{EVAL_VERSION}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(judged(load_pipeline("toy", device="cpu"), concept, judge)))
    return json.loads(path.read_text())


def shared_anchors(toy, config) -> Path:
    """Generate the concept's anchor images once (DoCo's own cache format) for every run of the sweep."""
    from erasers.doco import anchor_latents, training_pairs
    from studio.loading import load_pipeline

    tag = hashlib.sha1(
        json.dumps([toy.anchors, config.num_anchor_images, config.anchor_steps, config.anchor_guidance, config.seed]).encode()
    ).hexdigest()[:10]
    path = RUNS / f"anchors-{tag}.safetensors"
    if not path.is_file():
        anchor_latents(load_pipeline("toy", device="cpu"), [a for a, _ in training_pairs(toy)], config, cache=path)
    return path


def run(concept: str, overrides: dict, judge) -> list:
    """One run to warm-up + max(BUDGETS) steps, measured after warm-up + each budget."""
    from erasers import erase, get_config
    from erasers.doco import ANCHOR_CACHE, toy_target
    from studio.loading import load_pipeline

    rid = key(concept, overrides)
    done = {r["budget"] for r in records() if r["id"] == rid}
    if done >= set(BUDGETS):
        return [r for r in records() if r["id"] == rid]
    toy = toy_target(concept)
    warmup = overrides["warmup_steps"]
    config = get_config("doco", "official", {**overrides, "iterations": warmup + max(BUDGETS)})
    folder = RUNS / rid
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / ANCHOR_CACHE).is_file():
        shutil.copy(shared_anchors(toy, config), folder / ANCHOR_CACHE)
    orig = original(concept, judge)
    pipe = load_pipeline("toy", device="cpu")
    clock = {"eval": 0.0, "t0": time.time()}

    def measure(info):
        budget = info.get("step", 0) - warmup
        if "stage" in info or budget not in BUDGETS or budget in done:
            return
        t = time.time()
        from safetensors.torch import save_file

        save_file(
            {n: p.detach().contiguous() for n, p in pipe.unet.named_parameters() if p.requires_grad},
            str(folder / f"weights-{budget}.safetensors"),
        )
        scores = judged(pipe, concept, judge)
        clock["eval"] += time.time() - t
        forms = {f: scores[f] for f in ("direct", "synonym", "alias")}
        record = {
            "eval": EVAL_VERSION,
            "id": rid,
            "concept": concept,
            "overrides": overrides,
            "budget": budget,
            "steps": info["step"],
            "erasure": forms,
            "erasure_mean": float(np.mean(list(forms.values()))),
            "original_erasure": {f: orig[f] for f in forms},
            "retained": scores["retained"],
            "retained_original": orig["retained"],
            "retained_ratio": scores["retained"] / max(orig["retained"], 1e-9),
            "d_loss": info["loss"],
            "seconds_this_session": round(time.time() - clock["t0"] - clock["eval"], 1),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        with JSONL.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps({k: record[k] for k in ("concept", "overrides", "budget", "erasure", "retained_ratio")}), flush=True)

    result = erase(pipe, toy, "doco", config=config, checkpoint_dir=folder, callback=measure, progress=False)
    with JSONL.open("a") as f:  # the run's cost, once
        f.write(
            json.dumps({"eval": EVAL_VERSION, "id": rid, "concept": concept, "overrides": overrides, "budget": None, "stats": result.stats})
            + "\n"
        )
    return [r for r in records() if r["id"] == rid]


def remeasure(judge) -> None:
    """Re-judge every measured point of the previous evaluation version from its saved UNet weights."""
    from safetensors.torch import load_file
    from studio.loading import load_pipeline

    have = {(r["concept"], json.dumps(r["overrides"], sort_keys=True), r["budget"]) for r in points()}
    for old in [r for r in records(EVAL_VERSION - 1) if r.get("budget") is not None]:
        weights = RUNS / old["id"] / f"weights-{old['budget']}.safetensors"
        if (old["concept"], json.dumps(old["overrides"], sort_keys=True), old["budget"]) in have or not weights.is_file():
            continue
        orig = original(old["concept"], judge)
        pipe = load_pipeline("toy", device="cpu")
        pipe.unet.load_state_dict(load_file(str(weights)), strict=False)
        scores = judged(pipe, old["concept"], judge)
        forms = {f: scores[f] for f in ("direct", "synonym", "alias")}
        record = {
            **old,
            "eval": EVAL_VERSION,
            "id": key(old["concept"], old["overrides"]),
            "weights_of": old["id"],
            "erasure": forms,
            "erasure_mean": float(np.mean(list(forms.values()))),
            "original_erasure": {f: orig[f] for f in forms},
            "retained": scores["retained"],
            "retained_original": orig["retained"],
            "retained_ratio": scores["retained"] / max(orig["retained"], 1e-9),
        }
        with JSONL.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps({k: record[k] for k in ("concept", "overrides", "budget", "erasure", "retained_ratio")}), flush=True)


def points() -> list:
    return [r for r in records() if r.get("budget") is not None]


def choose(rows: list):
    """(overrides, budget, per-concept rows) of the best setting by the criterion, or None."""
    by = {}
    for r in rows:
        by.setdefault((json.dumps(r["overrides"], sort_keys=True), r["budget"]), {})[r["concept"]] = r
    ok = [(k, v) for k, v in by.items() if set(v) == set(CONCEPTS) and all(r["retained_ratio"] >= 0.9 for r in v.values())]
    if not ok:
        return None
    (ov, budget), per = max(ok, key=lambda kv: (round(np.mean([r["erasure_mean"] for r in kv[1].values()]), 4), -kv[0][1]))
    return json.loads(ov), budget, per


def table_lines(rows: list) -> list:
    lines = [
        "| concept | overrides | UNet steps | direct | synonyms | aliases | mean | retained (ratio) | D loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    firsts = {}
    for r in rows:
        firsts.setdefault(r["concept"], r)
    for c, r in firsts.items():
        o = r["original_erasure"]
        lines.append(
            f"| {c} | original model | 0 | {o['direct']:.0%} | {o['synonym']:.0%} | {o['alias']:.0%} | "
            f"{np.mean(list(o.values())):.0%} | {r['retained_original']:.0%} (1.00) | - |"
        )
    skip = ("num_anchor_images", "anchor_batch_size", "checkpoint_every")
    for r in sorted(rows, key=lambda r: (r["concept"], json.dumps(r["overrides"], sort_keys=True), r["budget"])):
        e = r["erasure"]
        ov = ", ".join(f"{k}={v}" for k, v in r["overrides"].items() if k not in skip)
        lines.append(
            f"| {r['concept']} | {ov} | {r['budget']} | {e['direct']:.0%} | {e['synonym']:.0%} | {e['alias']:.0%} | "
            f"{r['erasure_mean']:.0%} | {r['retained']:.0%} ({r['retained_ratio']:.2f}) | {r['d_loss']:.2f} |"
        )
    return lines


def write_table() -> None:
    rows = points()
    lines = [
        "# DoCo toy-world sweep",
        "",
        "Generated by `benchmarks/doco_sweep.py` on the toy model (CPU). Each setting is one run to warm-up + 400 UNet steps,",
        "measured after 100, 200 and 400 UNet steps. Erasure: share of images NOT judged as the concept (8 prompts per form",
        "x 2 seeds, 25 DDIM steps; the original model's erasure on the same prompts in the first rows). Retained: other",
        "concepts of the same kind (8 prompts each x 2 seeds) judged fully correct, ratio to the original. Overrides are",
        "on top of `DoCoConfig()` (256 anchor images, batch 8); `lr` is before `scale_lr` (x batch 8). D loss: the",
        "discriminator's at that step (chance 1.39). Criterion: max mean erasure over both concepts with both ratios >= 0.90.",
        "",
        *table_lines(rows),
    ]
    chosen = choose(rows)
    if chosen:
        ov, budget, per = chosen
        preset = {k: v for k, v in ov.items() if k not in ("anchor_batch_size", "checkpoint_every")}
        preset["iterations"] = ov["warmup_steps"] + budget
        lines += [
            "",
            f"Chosen: `{json.dumps(preset)}` (mean erasure "
            + ", ".join(f"{c} {r['erasure_mean']:.0%} at ratio {r['retained_ratio']:.2f}" for c, r in per.items())
            + ").",
        ]
    first = [r for r in records(1) if r.get("budget") is not None]
    if first:
        lines += [
            "",
            "## First pass (superseded)",
            "",
            "The same stage-1 runs measured with 4 retain prompts per concept (16 images for a style, 6 points per image:",
            "too coarse at the 0.90 line), kept for the record.",
            "",
            *table_lines(first),
        ]
    MD.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=[1, 2])
    p.add_argument("--concepts", nargs="*", default=list(CONCEPTS))
    p.add_argument("--remeasure", action="store_true", help="re-judge the previous evaluation's saved weights")
    args = p.parse_args()
    if args.remeasure:
        from studio.judges import get_judge

        remeasure(get_judge("toy"))
    if args.stage:
        from studio.judges import get_judge

        judge = get_judge("toy")
        if args.stage == 1:
            grid = STAGE1
        else:
            chosen = choose([r for r in points() if r["overrides"] in STAGE1])
            if chosen is None:
                raise SystemExit("no stage-1 setting keeps retained >= 90% on both concepts; widen stage 1 first")
            grid = stage2(chosen[0])
        for overrides in grid:
            for concept in args.concepts:
                run(concept, overrides, judge)
                write_table()
    write_table()


if __name__ == "__main__":
    main()
