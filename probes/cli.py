"""`studio probe`: revival probes on an erased model, beside the oracle's and the original's.

    studio probe --erased outputs/triangle-esd-x/model --concept triangle --probes relearning,inversion --oracle auto
    studio probe --erased runs/revival_models/esd-u--triangle --concept triangle --probes relearning --k 4,16 --original
    studio probe --erased toy --concept triangle --probes completion,inpainting --budget small
    studio probe --erased outputs/triangle-esd-x/model --concept triangle --probes distance --oracle auto --original

Writes report.json, report.md and grids/<model>-<probe>.png into --out. Relearning updates the
component the eraser changed (read from the erased folder's erasure.json; --component overrides),
and the oracle and the original are fine-tuned the same way, so that the ratio compares like with
like. Relearning runs checkpoint into --out/checkpoints/ and a killed run resumes. Distance samples
every model on the same prompts and seeds and reports the erased model's distance to the oracle and
to the original (one result, on the erased model's entry).
"""

import argparse
import time
from pathlib import Path

OUT_NAMES = {"report.json", "report.md", "grids", "checkpoints"}


def register(sub) -> None:
    from studio.cli import RegistryChoices, add_threads_arg

    from . import PROBES

    p = sub.add_parser(
        "probe",
        help="revival probes (relearning, inversion, completion, inpainting) on an erased model, against the oracle",
        description="Is the erased concept gone or only dormant? Relearning, inversion, diffusion-completion and inpainting probes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--erased", required=True, help="the erased model: a folder written by `studio erase` (or 'toy' for the original)")
    p.add_argument("--concept", required=True, help="the toy concept that was erased (e.g. triangle, striped)")
    p.add_argument(
        "--probes",
        default="relearning,inversion",
        help="comma-separated probes: " + ", ".join(PROBES),
    )
    p.add_argument(
        "--oracle", default=None, help="the oracle's folder, or 'auto' (assets/toy-oracle-CONCEPT); probed the same way, for the ratio"
    )
    p.add_argument("--original", action="store_true", help="also probe the original model (the erased model's base)")
    p.add_argument("--k", default="4", help="relearning: comma-separated numbers of images (e.g. 4,16)")
    p.add_argument(
        "--component",
        choices=RegistryChoices("probes.relearning", "COMPONENTS"),
        metavar="COMPONENT",
        default=None,
        help="relearning: what to fine-tune (%(choices)s); default: what the eraser changed (erasure.json), else cross-attention",
    )
    p.add_argument(
        "--budget",
        choices=("default", "medium", "small"),
        default="default",
        help="'small': a few images and steps, to try it in a minute; 'medium': 25 DDIM steps, fewer judged images",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="PROBE.KEY=VALUE", help="a probe setting, e.g. relearning.lr=3e-4 (repeatable)"
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    add_threads_arg(p)
    p.add_argument("--out", default=None, help="output folder (default outputs/probe-CONCEPT)")
    p.set_defaults(fn=cmd_probe)


def parse_list(text: str, what: str) -> list:
    items = [t.strip() for t in str(text).replace(" ", ",").split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{what} is empty; give a comma-separated list")
    return items


def parse_k(text: str) -> list:
    out = []
    for item in parse_list(text, "k"):
        try:
            k = int(item)
        except ValueError:
            raise ValueError(f"--k takes whole numbers of images, got {item!r}; e.g. --k 4,16") from None
        if k < 1:
            raise ValueError(f"--k {k}: relearning needs at least one image of the concept; e.g. --k 4,16")
        out.append(k)
    return out


def parse_probe_sets(pairs, names) -> dict:
    from erasers.cli import parse_sets

    out = {name: {} for name in names}
    for pair in pairs:
        key = pair.partition("=")[0]
        probe, dot, field = key.partition(".")
        if not dot or probe not in out:
            raise ValueError(f"--set takes PROBE.KEY=VALUE with PROBE one of {', '.join(names)}; got {pair!r}")
        out[probe].update(parse_sets([f"{field}={pair.partition('=')[2]}"]))
    return out


def models_to_probe(args) -> dict:
    """label -> model path (checked before anything loads)."""
    from studio.loading import ERASURE_FILE, TOY_MODEL
    from studio.toyworld.oracle import oracle_path

    models = {}
    erased = args.erased
    if erased not in ("toy",) and not Path(erased).exists():
        raise ValueError(f"--erased {erased}: no such folder; give a folder written by `studio erase` (or 'toy')")
    models["erased" if erased != "toy" else "original"] = erased
    if args.oracle:
        path = oracle_path(args.concept) if args.oracle == "auto" else Path(args.oracle)
        if not (path / "oracle.json").is_file():
            raise ValueError(
                f"no oracle at {path} (no oracle.json); train one with `studio toyworld train --without {args.concept} --install`, or drop --oracle"
            )
        models["oracle"] = str(path)
    if args.original and "original" not in models:
        marker = Path(erased) / ERASURE_FILE
        base = "toy"
        if marker.is_file():
            import json

            base = json.loads(marker.read_text()).get("base_model", "toy")
        models["original"] = base if base != str(TOY_MODEL) else "toy"
    return models


def cmd_probe(args) -> int:
    import probes
    from probes.common import erasable_concept
    from studio.cli import check_folder, claim_folder, set_threads

    concept = erasable_concept(args.concept).name
    names = parse_list(args.probes, "probes")
    bad = [n for n in names if n not in probes.PROBES]
    if bad:
        raise ValueError(f"unknown probe(s) {', '.join(bad)}; available: {', '.join(probes.PROBES)}")
    ks = parse_k(args.k)
    sets = parse_probe_sets(args.set, names)
    configs = {n: probes.get_config(n, sets[n], budget=args.budget) for n in names if n != "relearning"}
    models = models_to_probe(args)
    component = args.component or probes.component_for(models.get("erased", "toy"))
    relearning = (
        {
            k: probes.get_config("relearning", {**sets.get("relearning", {}), "images": k, "component": component}, budget=args.budget)
            for k in ks
        }
        if "relearning" in names
        else {}
    )
    out = Path(args.out or f"outputs/probe-{concept}")
    check_folder(out, OUT_NAMES)
    set_threads(args.threads)

    from tqdm.auto import tqdm

    from studio.loading import load_pipeline
    from studio.progress import describe

    from .report import add_comparisons, probe_key, write_report

    claim_folder(out, OUT_NAMES)
    report = {"concept": concept, "budget": args.budget, "models": {}}
    grids = {}
    judge = probes.default_judge()
    drawn, counter = {}, None  # the distance probe: every model's images, compared after the loop
    t0 = time.time()
    bar = tqdm(total=len(models) * (len(configs) + len(relearning)), desc="probes", unit="probe")
    for label, path in models.items():
        pipe = load_pipeline(path, device=args.device)
        entry = report["models"][label] = {"path": str(path), "component": component if relearning else None, "results": {}}
        jobs = [(n, c) for n, c in configs.items()] + [("relearning", c) for c in relearning.values()]
        for name, config in jobs:
            key = probe_key(name, config)
            bar.set_postfix_str(f"{label} {key}")
            if name == "distance":
                from .common import Counter
                from .distance import draw

                counter = counter or Counter(config.max_unet_evals)
                if not drawn:
                    counter.check_plan(config.planned_unet_evals(concept, len(models)), "the distance probe")
                drawn[label] = draw(
                    pipe,
                    concept,
                    config,
                    judge,
                    label=label,
                    counter=counter,
                    callback=lambda e: bar.set_postfix_str(f"{label} {describe(e)}"[:80]),
                )
                bar.update(1)
                continue
            extra = {"checkpoint_dir": out / "checkpoints" / f"{label}-{key}"} if name == "relearning" else {}
            result = probes.run_probe(
                name, pipe, concept, config, judge=judge, callback=lambda e: bar.set_postfix_str(f"{label} {describe(e)}"[:80]), **extra
            )
            entry["results"][key] = result.as_dict()
            grids[f"{label}-{key}"] = result.grid(title=f"{label}: {key} / {concept}")
            bar.update(1)
        del pipe
    bar.close()
    if drawn:
        from .distance import assemble

        subject = next(iter(models))
        result = assemble(drawn, subject, configs["distance"], counter)
        report["models"][subject]["results"]["distance"] = result.as_dict()
        grids[f"{subject}-distance"] = result.grid(title=f"distance / {concept}: the same prompts and seeds")
    add_comparisons(report)
    report["seconds"] = round(time.time() - t0, 1)
    write_report(report, out, grids)
    from .report import format_report

    print(format_report(report))
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and {len(grids)} grids in {out / 'grids'}")
    return 0
