"""How fast the closed-form erasers are: UCE and RECE beside ESD-x, on the CPU, in one run.

  * toy: UCE and RECE (official settings, and their toy presets from the committed sweeps) and ESD-x (its
    toy preset, and the same cut to 5, 10 and 20 iterations) each erase "triangle" from the shipped toy
    model; unless --no-judge each erased model is also judged as the preset sweep does
    (`preset_sweep.quick_eval`: 8 direct prompts x --seeds seeds (4), DDIM 25 steps; retained: 4 prompts x
    --seeds seeds of each other shape), every rate with its count and 95% Wilson interval, so the
    speed-up is read beside the erasure it buys. "At comparable erasure" (the issue's target) sets each
    closed form against the cheapest ESD-x run whose concept rate is within its 95% interval, and
    against the cheapest that shows the concept as rarely or less.
  * sd-v1 architecture: UCE and RECE erase one concept from SD v1.4's UNet and text encoder built from
    assets/configs/sd-v1 with RANDOM weights (UNet2DConditionModel.from_config, CLIPTextModel from
    its config; nothing is downloaded). The 32 K/V matrices and the solves have SD's sizes; the numbers
    say nothing about erasure quality there.

Times are the `erase` call only (text encoding and the solves), not loading or building the models.
Targets (issue 15): <= 1 s per toy concept, <= 10 s per SD-architecture concept, >= 100x faster than
ESD-x at comparable judged erasure.

    OMP_NUM_THREADS=1 python benchmarks/closed_form_speed.py [--no-judge] [--no-sd] [--seeds 4]
    python benchmarks/closed_form_speed.py --report      # the tables again from the JSON, nothing run
"""

import argparse
import json
import os
import time
from types import SimpleNamespace

import torch
from _util import RESULTS, write_results

from erasers import Concept, erase, esd, get_config, rece, toy_target, uce
from studio.loading import load_pipeline
from studio.stats import Rate, format_rate, overlap
from studio.toyworld.captions import erasure_prompts

CONCEPT = "triangle"


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


ESD_BUDGETS = (5, 10, 20)  # shorter ESD-x runs than its toy preset's 50 iterations, for the speed-up at comparable erasure


def toy_runs(judge_it: bool, seeds: int) -> dict:
    from preset_sweep import quick_eval
    from uce_sweep import others_of

    from studio.judges import get_judge

    judge = get_judge("toy") if judge_it else None
    rows = {}
    target = Concept(erasure_prompts(CONCEPT), name=CONCEPT)
    runs = [
        (
            "uce",
            lambda p: uce.erase(
                p, Concept(erasure_prompts(CONCEPT), retain=others_of(CONCEPT), name=CONCEPT), uce.UCEConfig(), progress=False
            ),
            "official settings, other shapes preserved",
        ),
        ("rece", lambda p: rece.erase(p, target, rece.RECEConfig(), progress=False), "official settings (3 epochs)"),
        ("uce, toy preset", lambda p: erase(p, toy_target("uce", CONCEPT), "uce", preset="toy", progress=False), "toy preset (uce_sweep)"),
        (
            "rece, toy preset",
            lambda p: erase(p, toy_target("rece", CONCEPT), "rece", preset="toy", progress=False),
            "toy preset (rece_sweep)",
        ),
        ("esd-x", lambda p: esd.erase(p, target, get_config("esd-x", "toy"), progress=False), "toy preset (lr 1e-3, 50 iterations)"),
    ]
    runs += [
        (
            f"esd-x, {n} iterations",
            lambda p, n=n: esd.erase(p, target, get_config("esd-x", "toy", {"iterations": n}), progress=False),
            f"toy preset cut to {n} iterations",
        )
        for n in (ESD_BUDGETS if judge_it else ())
    ]
    if judge_it:
        rows["original"] = quick_eval(load_pipeline("toy"), CONCEPT, judge, seeds)
    for name, run, note in runs:
        pipe = load_pipeline("toy")
        result, seconds = timed(run, pipe)
        rows[name] = {"seconds": seconds, "unet_evals": result.stats["unet_evals"], "settings": note}
        if judge_it:
            rows[name].update(quick_eval(pipe, CONCEPT, judge, seeds))
    return rows


def sd_architecture():
    """SD v1.4's tokenizer, text encoder and UNet with random weights, fp32, from assets/configs/sd-v1."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from studio.paths import CONFIGS

    cfg = CONFIGS / "sd-v1"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(cfg / "unet"))).eval().requires_grad_(False)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(cfg / "text_encoder"))).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(cfg / "tokenizer"))
    return SimpleNamespace(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer)


def sd_runs() -> dict:
    t0 = time.perf_counter()
    pipe = sd_architecture()
    build = time.perf_counter() - t0
    layers = uce.kv_layers(pipe.unet)
    original = {n: l.weight.detach().clone() for n, l in layers.items()}
    concept = Concept(["a photo of a church"], name="church")
    rows = {
        "build_seconds": build,
        "kv_matrices": len(layers),
        "kv_parameters": sum(w.numel() for w in original.values()),
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
    }
    for name, run in [
        ("uce", lambda: uce.erase(pipe, concept, uce.UCEConfig(), progress=False)),
        ("uce (rewrite rows)", lambda: uce.erase(pipe, concept, uce.UCEConfig.rewrite(), progress=False)),
        ("rece", lambda: rece.erase(pipe, concept, rece.RECEConfig(), progress=False)),
    ]:
        with torch.no_grad():
            for n, l in layers.items():
                l.weight.copy_(original[n])
        result, seconds = timed(run)
        rows[name] = {"seconds": seconds, "unet_evals": result.stats["unet_evals"], "changed": len(result.weights)}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-judge", action="store_true", help="skip judging the toy erasures")
    ap.add_argument("--no-sd", action="store_true", help="skip the SD v1.4 architecture")
    ap.add_argument("--seeds", type=int, default=4, help="seeds per judged prompt (8 direct prompts; 4 retain prompts per other shape)")
    ap.add_argument("--report", action="store_true", help="rewrite the table from benchmarks/results/closed_form_speed.json, run nothing")
    args = ap.parse_args()
    if args.report:
        saved = json.loads((RESULTS / "closed_form_speed.json").read_text())
        toy, sd, threads = saved["toy"], saved["sd_v1_architecture"], saved["omp_num_threads"]
        load, args.seeds, args.no_judge, args.no_sd = saved["load_average"], saved["seeds"], "original" not in toy, sd is None
        torch_threads, cpus = saved["torch_threads"], saved["cpus"]
    else:
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        toy = toy_runs(not args.no_judge, args.seeds)
        sd = None if args.no_sd else sd_runs()
        load, torch_threads, cpus = os.getloadavg()[0], torch.get_num_threads(), os.cpu_count()
    esd_s = toy["esd-x"]["seconds"]
    esd_rows = sorted((m for m in toy if m.startswith("esd-x")), key=lambda m: toy[m]["seconds"])
    closed = [m for m in toy if m != "original" and not m.startswith("esd-x")]
    ratios = {m: esd_s / toy[m]["seconds"] for m in closed}
    # at comparable erasure, two readings: the cheapest ESD-x run whose concept rate is within the closed
    # form's 95% interval ("not shown to differ"), and the cheapest that shows the concept as rarely or less
    matched = {}
    for m in [] if args.no_judge else closed:
        shown = Rate(toy[m]["shown"], toy[m]["n"])
        for rule, ok in (
            ("comparable", lambda e: overlap(Rate(toy[e]["shown"], toy[e]["n"]), shown)),
            ("as much", lambda e: toy[e]["shown"] <= toy[m]["shown"]),
        ):
            match = next((e for e in esd_rows if ok(e)), None)
            if match is not None:
                matched.setdefault(m, {})[rule] = {"esd": match, "ratio": toy[match]["seconds"] / toy[m]["seconds"]}

    lines = [
        (
            f"Closed-form erasers on the CPU, OMP_NUM_THREADS={threads} (torch threads {torch_threads}); load average "
            f"{load:.1f} on {cpus} cores at the end of the run (other jobs shared the machine when it is above 1). Time = the erase call only."
        ),
        "",
        f'Toy model, concept "{CONCEPT}"'
        + ("" if args.no_judge else f" (judged: 8 direct prompts x {args.seeds} seeds, DDIM 25 steps; retained: 4 prompts x {args.seeds} seeds of each other shape)")
        + ":",
        "",
        "| method | settings | seconds | UNet evaluations | ESD-x time / this | concept shown | retained |",
        "|---|---|---|---|---|---|---|",
    ]

    def judged(r):
        if "shown" not in r:
            return "- | -"
        return f"{format_rate(r['shown'], r['n'])} | {format_rate(r['retained_k'], r['retained_n'])}"

    if "original" in toy:
        lines.append(f"| (original) | | | | | {judged(toy['original'])} |")
    for m in (*closed, *esd_rows[::-1]):
        r = toy[m]
        ratio = f"{ratios[m]:.0f}x" if m in ratios else f"{esd_s / r['seconds']:.1f}x"
        lines.append(f"| {m} | {r['settings']} | {r['seconds']:.3f} | {r['unet_evals']} | {ratio} | {judged(r)} |")
    if sd:
        lines += [
            "",
            (
                f"SD v1.4 architecture, random weights ({sd['kv_matrices']} K/V matrices, {sd['kv_parameters'] / 1e6:.1f} M of the UNet's "
                f"{sd['unet_parameters'] / 1e6:.0f} M parameters; the full fp32 UNet and text encoder were built in {sd['build_seconds']:.0f} s, not timed), "
                'concept "a photo of a church":'
            ),
            "",
            "| method | seconds | matrices changed |",
            "|---|---|---|",
        ]
        for m in ("uce", "uce (rewrite rows)", "rece"):
            lines.append(f"| {m} | {sd[m]['seconds']:.2f} | {sd[m]['changed']} |")
    if matched:
        lines += [
            "",
            "At comparable erasure: each closed form against the cheapest ESD-x run above whose concept rate is within the closed "
            "form's 95% interval (the intervals overlap: not shown to differ), and against the cheapest that shows the concept as "
            "rarely or less; speed-up = that ESD-x run's time / the closed form's.",
            "",
            "| closed form | concept shown | retained | comparable ESD-x run: shown, retained | speed-up | ESD-x run erasing as much: shown, retained | speed-up |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, x in matched.items():
            r = toy[m]
            cells = []
            for rule in ("comparable", "as much"):
                if rule not in x:
                    cells += ["none", "-"]
                    continue
                e = toy[x[rule]["esd"]]
                cells += [
                    f"{x[rule]['esd']}: {format_rate(e['shown'], e['n'])}, {format_rate(e['retained_k'], e['retained_n'])}",
                    f"{x[rule]['ratio']:.0f}x",
                ]
            lines.append(
                f"| {m} | {format_rate(r['shown'], r['n'])} | {format_rate(r['retained_k'], r['retained_n'])} | " + " | ".join(cells) + " |"
            )
    targets = [
        f"toy UCE {toy['uce']['seconds']:.3f} s and RECE {toy['rece']['seconds']:.3f} s (target <= 1 s)",
        "ESD-x / " + ", ESD-x / ".join(f"{m} {ratios[m]:.0f}x" for m in closed) + " (target >= 100x)",
    ]
    comparable = [f"{m} {x['comparable']['ratio']:.0f}x (vs {x['comparable']['esd']})" for m, x in matched.items() if "comparable" in x]
    if comparable:
        targets.append("at comparable erasure (intervals overlap) " + ", ".join(comparable))
    if sd:
        targets.insert(1, f"SD-architecture UCE {sd['uce']['seconds']:.2f} s and RECE {sd['rece']['seconds']:.2f} s (target <= 10 s)")
    lines += ["", "Targets: " + "; ".join(targets) + "."]
    write_results(
        "closed_form_speed",
        {
            "omp_num_threads": threads, "torch_threads": torch_threads, "cpus": cpus, "load_average": load, "seeds": args.seeds,
            "toy": toy, "sd_v1_architecture": sd, "esd_over": ratios, "matched": matched,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
