"""The attack matrix: every registered eraser at its toy preset x every registered attack, on the toy world.

Rows are the erasers of `erasers.METHODS` (plus the unerased original, the reference every attack should
break), columns the attacks of `erasers.attacks.ATTACKS` ("none" first), on a shape (triangle, an object)
and a style (striped). Nothing here names an eraser or an attack: both come from the registries.

A cell is (eraser, concept, attack, erasure seed, pairs): the eraser's toy preset (with `seed` = the erasure
seed where its config has one; closed-form erasers are deterministic and run once), then
`erasers.attacks.run_many` over `pairs` prompt-seed pairs (the concept's direct toy prompts x seeds, as the
report card of `erasers.evaluate`), each attack at its toy budget (`erasers.evaluate.attack_config`) with
every judged image at `--steps` DDIM steps. Each cell reports the judged rate (pre-attack + post-attack
successes / pairs) with its count and 95% Wilson interval, the attack's cost (UNet evaluations, seconds)
and the erasure's, and writes a grid (`results/attack_matrix/<cell>.png`: a row per prompt, a column per
seed, the judge's verdict under each image).

Abstentions: every cell is also judged by the strict judge (`studio.judges.get_judge("toy-strict")`: the toy
judge and the independently trained check judge, abstaining when either is unsure or they disagree) on the
image that decided each pair (the success image, else the last one tried, as the grid shows it). The cell's
`strict` rate counts "shows" over the decided pairs with the abstentions apart ("9% (4/46) [3, 21], 4
abstained"). Cells run before this was added are judged again by `--rejudge`, which makes each pair's deciding
image again from the cell (its adversarial prompt and seed on the saved erased model; CCE's learned embedding
from the cell's artifacts, the soft prompt's learned prefix from each pair) and checks that the toy judge's
verdict on it equals the cell's (`replay_agreement`). Soft-prompt cells made before the prefix was kept cannot
be made again: their strict rate is left out.

Headline cells (each eraser on both concepts under the attacks of HEADLINE_ATTACKS that are registered)
use `--headline-pairs` pairs (50) and `--erasure-seeds` erasures (3): the table gives their rate pooled
over the seeds with its interval, and the mean and spread (min-max) of the per-seed rates.

Every finished cell is one JSON file in `results/attack_matrix/cells/`, written atomically, so a killed run
resumes without redoing finished cells; erased models are kept in runs/attack_matrix_models/ (not
committed) so a resumed run does not erase again.

    python benchmarks/attack_matrix.py --plan                  # the cells left and what they will cost
    python benchmarks/attack_matrix.py                         # run (or resume) all of it, then the table
    python benchmarks/attack_matrix.py --erasers esd-x,uce --attacks none,cce --concepts triangle --pairs 10
    python benchmarks/attack_matrix.py --report                # the table from the cells done so far
    python benchmarks/attack_matrix.py --rejudge               # the strict judge on cells that lack it, then the table
"""

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FOLDER = RESULTS / "attack_matrix"
MODELS = RESULTS.parents[1] / "runs" / "attack_matrix_models"  # not committed
ORIGINAL = "original"  # the unerased model: a row of its own
CONCEPTS = ("triangle", "striped")  # an object and a style
HEADLINE_ATTACKS = ("unlearndiffatk", "cce")  # the headline columns (those registered)
STEPS = 20  # DDIM steps of every judged image (the toy erasure tests' sampler)
# priors for --plan until cells are done: seconds per UNet evaluation of the toy model (one thread, shared
# CPU) and the erasure cost where no erasure of that eraser has been timed (erasure_table.py's rows, else this)
PRIOR_SECONDS_PER_UNET_EVAL = 0.01
PRIOR_ERASE_SECONDS = 300.0


@dataclass(frozen=True)
class Cell:
    eraser: str  # a key of erasers.METHODS, or "original"
    concept: str
    attack: str  # a key of erasers.attacks.ATTACKS
    seed: int  # the erasure seed
    pairs: int  # prompt-seed pairs attacked

    @property
    def key(self) -> str:
        return f"{self.eraser}--{self.concept}--{self.attack}--s{self.seed}--p{self.pairs}"

    @property
    def model_key(self) -> str:
        return f"{self.eraser}--{self.concept}--s{self.seed}"


def seeded(eraser: str) -> bool:
    """True when the eraser's config has a seed (iterative erasers); closed-form ones are deterministic."""
    from dataclasses import fields

    from erasers import config_class

    return eraser != ORIGINAL and any(f.name == "seed" for f in fields(config_class(eraser)))


def plan_cells(erasers, attacks, concepts, pairs: int, headline_pairs: int, erasure_seeds: int, headline=HEADLINE_ATTACKS) -> list:
    """Every cell, grouped by erased model (so one erasure serves its attacks in a row)."""
    cells = []
    for concept in concepts:
        for eraser in erasers:
            seeds = range(erasure_seeds if eraser != ORIGINAL and seeded(eraser) else 1)
            for seed in seeds:
                for attack in attacks:
                    if attack in headline:
                        cells.append(Cell(eraser, concept, attack, seed, headline_pairs))
                    elif seed == 0:
                        cells.append(Cell(eraser, concept, attack, 0, pairs))
    return cells


def cell_path(cell: Cell, folder: Path = FOLDER) -> Path:
    return folder / "cells" / f"{cell.key}.json"


def write_json(path: Path, data) -> None:
    """Atomically: a killed run leaves either the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def run_matrix(cells, cell_fn, folder: Path = FOLDER, fresh: bool = False, log=print) -> list:
    """Each cell's result: from its cached JSON, else `cell_fn(cell)` (a JSON-able dict), cached at once."""
    out = []
    for i, cell in enumerate(cells):
        path = cell_path(cell, folder)
        if path.is_file() and not fresh:
            out.append(json.loads(path.read_text()))
            continue
        t0 = time.time()
        result = {**cell_fn(cell), "cell": asdict(cell), "key": cell.key}
        result.setdefault("cell_seconds", round(time.time() - t0, 1))
        write_json(path, result)
        out.append(result)
        log(f"[{i + 1}/{len(cells)}] {cell.key}: {result.get('rate_text', '')} ({result['cell_seconds']:.0f} s)")
    return out


# ----------------------------------------------------------------------------- cost estimate


def attack_estimate(name: str, pairs: int, steps: int = STEPS) -> int | None:
    """The most UNet evaluations attack `name` may spend on `pairs` pairs at its toy budget (None: not stated)."""
    from erasers.attacks import get
    from erasers.evaluate import attack_budget

    spec, config = get(name), matrix_config(name, steps)
    budget = attack_budget(spec, config)
    if budget is None:
        return None
    if spec.unit == "prompt":
        return budget * pairs
    per_pair = config.eval_unet_evals() if hasattr(config, "eval_unet_evals") else 0
    return budget + per_pair * pairs


def erase_prior(eraser: str, concept: str, done: list) -> float:
    """Seconds to erase: measured in done cells, else erasure_table.py's row, else the prior."""
    if eraser == ORIGINAL:
        return 0.0
    times = [r["erase_seconds"] for r in done if r["cell"]["eraser"] == eraser and r.get("erase_seconds")]
    if times:
        return statistics.median(times)
    row = RESULTS / "erasure_rows" / f"{eraser}--{concept}.json"
    if row.is_file():
        return float(json.loads(row.read_text()).get("erase_seconds", PRIOR_ERASE_SECONDS))
    return PRIOR_ERASE_SECONDS


def estimate(cells, folder: Path = FOLDER, steps: int = STEPS) -> dict:
    """What is left: the cells, their UNet evaluations (attack budgets) and seconds (measured rates where cells are done)."""
    done = [json.loads(cell_path(c, folder).read_text()) for c in cells if cell_path(c, folder).is_file()]
    left = [c for c in cells if not cell_path(c, folder).is_file()]
    measured = [json.loads(f.read_text()) for f in sorted((folder / "cells").glob("*.json"))]  # every cell run here, of any plan
    rates = [r["seconds"] / r["unet_evals"] for r in measured if r.get("unet_evals")]
    per_eval = statistics.median(rates) if rates else PRIOR_SECONDS_PER_UNET_EVAL
    evals, unknown, seconds, by_attack = 0, [], 0.0, {}
    erased = {r["cell"]["eraser"] + "--" + r["cell"]["concept"] + f"--s{r['cell']['seed']}" for r in done}
    erased |= {p.stem for p in MODELS.glob("*--s*") if (p / "erasure.json").is_file()} if MODELS.is_dir() else set()
    for c in left:
        est = attack_estimate(c.attack, c.pairs, steps)
        if est is None:
            unknown.append(c.attack)
        else:
            evals += est
            seconds += est * per_eval
            by_attack[c.attack] = by_attack.get(c.attack, 0) + est
        if c.model_key not in erased:
            seconds += erase_prior(c.eraser, c.concept, done)
            erased.add(c.model_key)
    return {
        "cells": len(cells),
        "done": len(done),
        "left": len(left),
        "unet_evals_left": evals,
        "seconds_left": seconds,
        "seconds_per_unet_eval": per_eval,
        "measured": bool(rates),
        "unet_evals_by_attack": by_attack,
        "unknown_budget": sorted(set(unknown)),
        "left_cells": [c.key for c in left],
    }


# ----------------------------------------------------------------------------- one cell


def matrix_config(name: str, steps: int = STEPS):
    """Attack `name` at its toy budget, every judged image at `steps` DDIM steps."""
    from dataclasses import fields, replace

    from erasers.evaluate import attack_config

    config = attack_config(name, toy=True)
    if any(f.name == "num_inference_steps" for f in fields(config)) and config.num_inference_steps != steps:
        config = replace(config, num_inference_steps=steps)
    return config


class Models:
    """The original toy model, the judge, and the erased model of the cell (the last one kept in memory,
    every one on disk under MODELS so a resumed run does not erase again)."""

    def __init__(self):
        from studio.judges import get_judge
        from studio.loading import load_pipeline

        self.original = load_pipeline("toy")
        self.judge = get_judge("toy")
        self.strict = get_judge("toy-strict")
        self.key, self.pipe, self.info = None, None, None

    def erased(self, cell: Cell):
        if cell.eraser == ORIGINAL:
            return self.original, {"erase_seconds": 0.0, "erase_unet_evals": 0}
        if self.key == cell.model_key:
            return self.pipe, self.info
        from erasers import erase, get_config, toy_target
        from studio.loading import load_pipeline

        folder = MODELS / cell.model_key
        info_path = folder / "matrix.json"
        if info_path.is_file() and (folder / "erasure.json").is_file():
            pipe, info = load_pipeline(folder), json.loads(info_path.read_text())
        else:
            overrides = {"seed": cell.seed} if seeded(cell.eraser) else {}
            config = get_config(cell.eraser, "toy", overrides)
            pipe = load_pipeline("toy")
            t0 = time.time()
            result = erase(pipe, toy_target(cell.eraser, cell.concept), cell.eraser, config=config, progress=False)
            info = {
                "erase_seconds": round(time.time() - t0, 1),
                "erase_unet_evals": int(result.stats.get("unet_evals", 0)),
                "erase_config": asdict(config),
            }
            result.save(folder, pipe, base_model="toy")
            write_json(info_path, info)
        self.key, self.pipe, self.info = cell.model_key, pipe, info
        return pipe, info


def make_cell_fn(models: Models, steps: int = STEPS, folder: Path = FOLDER):
    """The real cell: erase (or reuse), attack over the pairs, judge, grid."""
    from erasers import attacks
    from erasers.evaluate import EvalConfig, card_entry, card_grid, card_pairs, toy_spec

    def cell_fn(cell: Cell) -> dict:
        pipe, info = models.erased(cell)
        n_prompts = min(cell.pairs, 10)
        ecfg = EvalConfig(attack_prompts=n_prompts, attack_seeds=-(-cell.pairs // n_prompts), prompts_per_form=n_prompts)
        pairs = card_pairs(toy_spec(cell.concept, ecfg), ecfg)[: cell.pairs]
        spec, config = attacks.get(cell.attack), matrix_config(cell.attack, steps)
        run = attacks.run_many(
            cell.attack,
            pipe,
            [p for p, _ in pairs],
            [s for _, s in pairs],
            lambda images: models.judge.shows(images, cell.concept),
            config,
            original=models.original,
            concept=cell.concept,
            progress=False,
        )
        entry = card_entry(run, spec, config)
        images = entry.pop("_images")
        grid = folder / f"{cell.key}.png"
        grid.parent.mkdir(parents=True, exist_ok=True)
        if any(im is not None for im in images):
            card_grid(entry, images, cell.concept).save(grid)
        return {**entry, **info, "grid": grid.name, "strict": strict_entry(models.strict, images, entry, cell.concept)}

    return cell_fn


# ----------------------------------------------------------------------------- the strict judge (abstentions)


def replayable(result: dict) -> bool:
    """Whether each pair's deciding image can be made again from the cell: a soft-prompt pair needs its prefix."""
    return result["attack"] != "soft-prompt" or all(p["pre_success"] or "prefix" in p for p in result["per_pair"])


def replay_images(pipe, result: dict) -> list:
    """Each pair's deciding image made again from a cached cell (see the module docstring): the prompt's own
    where it decided the pair, else its adversarial prompt's text, CCE's learned token or the soft prompt's
    prefix; None where the text is over 77 tokens (never judged in the cell either)."""
    import torch

    from erasers.attacks import encode_with_prefix
    from erasers.attacks.cce import encode_with_token
    from erasers.attacks.common import over_limit
    from studio.sampling import sample, sample_pairs

    pairs, config = result["per_pair"], result["config"]
    settings = {"num_inference_steps": int(config["num_inference_steps"]), "guidance_scale": float(config["guidance_scale"])}
    own = [p["pre_success"] or p["adversarial_prompt"] == p["prompt"] for p in pairs]  # cells before CCE kept its own image
    learned = [i for i, o in enumerate(own) if not o] if result["attack"] in ("cce", "soft-prompt") else []
    texts = {i: p["prompt"] if own[i] else p["adversarial_prompt"] for i, p in enumerate(pairs) if i not in learned}
    texts = {i: t for i, t in texts.items() if not over_limit(pipe.tokenizer, t)}  # never judged in the cell either
    out = [None] * len(pairs)
    if texts:
        for i, im in zip(texts, sample_pairs(pipe, list(texts.values()), [pairs[i]["seed"] for i in texts], **settings)):
            out[i] = im
    if learned:
        with torch.no_grad():
            if result["attack"] == "cce":
                art = result["artifacts"]
                emb = torch.tensor(art["embedding"], dtype=torch.float32)
                cond = encode_with_token(
                    pipe.text_encoder, pipe.tokenizer, [pairs[i]["adversarial_prompt"] for i in learned], emb, art["placeholder"]
                )
            else:
                prefixes = torch.tensor([pairs[i]["prefix"] for i in learned])  # (B, k, D)
                cond = encode_with_prefix(pipe.text_encoder, pipe.tokenizer, [pairs[i]["prompt"] for i in learned], prefixes)
        made = sample(pipe, prompt_embeds=cond.to(pipe.unet.dtype), seed=[pairs[i]["seed"] for i in learned], **settings).images
        for i, im in zip(learned, made):
            out[i] = im
    return out


def strict_entry(strict, images: list, entry: dict, concept: str, judge=None) -> dict:
    """The cell under the strict judge: per-pair verdicts (1 shows, 0 does not, -1 abstained) on the deciding
    images and their rate with the abstentions apart; with `judge` (the toy judge), how often its verdict on
    these images equals the cell's own (a replay's check). A None image (no text fit in 77 tokens, never
    judged) is a failure, as in the cell."""
    from studio.stats import Rate

    judged = [i for i, im in enumerate(images) if im is not None]

    def per_pair(values, missing):
        out = [missing] * len(images)
        for i, v in zip(judged, values):
            out[i] = v
        return out

    verdicts = per_pair([int(v) for v in strict.verdicts([images[i] for i in judged], concept)], 0)
    out = {
        "verdicts": verdicts,
        "rate": Rate(sum(v == 1 for v in verdicts), sum(v >= 0 for v in verdicts), sum(v < 0 for v in verdicts)).as_dict(),
    }
    if judge is not None:
        again = per_pair([bool(v) for v in judge.shows([images[i] for i in judged], concept)], False)
        out["replay_agreement"] = Rate(sum(a == p["success"] for a, p in zip(again, entry["per_pair"])), len(again)).as_dict()
    return out


def rejudge(cells, log=print, folder: Path = FOLDER, judge=None, strict=None) -> int:
    """The strict judge on every cached cell of `cells` that lacks it (see the module docstring); cells
    grouped by erased model (one loaded at a time), each cell's JSON rewritten atomically. Returns the
    number of cells judged. `judge` / `strict`: the toy judge and the strict one (default: the shipped ones)."""
    from studio.judges import get_judge
    from studio.loading import load_pipeline

    todo = []
    for c in sorted(cells, key=lambda c: c.model_key):
        path = cell_path(c, folder)
        cached = json.loads(path.read_text()) if path.is_file() else None
        if cached is not None and "strict" not in cached and replayable(cached):
            todo.append((c, cached))
    if not todo:
        return 0
    judge, strict = judge or get_judge("toy"), strict or get_judge("toy-strict")
    key, pipe, judged = None, None, 0
    for i, (c, result) in enumerate(todo):
        if c.model_key != key:
            saved = MODELS / c.model_key
            if c.eraser != ORIGINAL and not (saved / "erasure.json").is_file():
                log(f"skip {c.key}: its erased model is not in {MODELS} (run the cell again with --fresh)")
                continue
            key, pipe = c.model_key, load_pipeline("toy" if c.eraser == ORIGINAL else saved)
        t0 = time.time()
        result["strict"] = strict_entry(strict, replay_images(pipe, result), result, c.concept, judge=judge)
        result["strict"]["seconds"] = round(time.time() - t0, 1)
        write_json(cell_path(c, folder), result)
        judged += 1
        r, a = result["strict"]["rate"], result["strict"]["replay_agreement"]
        log(f"[{i + 1}/{len(todo)}] {c.key}: strict {as_rate(r)}; replay agrees {a['k']}/{a['n']} ({time.time() - t0:.0f} s)")
    return judged


# ----------------------------------------------------------------------------- the table


def as_rate(d: dict):
    from erasers.evaluate import rate_from

    return rate_from(d)


def rate_of(r: dict):
    return as_rate(r["rate"])


def combine(results: list) -> dict:
    """Cells of one (eraser, concept, attack) over erasure seeds: the pooled rate and the seeds' mean and spread."""
    from studio.stats import Rate

    k, n = sum(rate_of(r).k for r in results), sum(rate_of(r).n for r in results)
    shares = [rate_of(r).share for r in results]
    stricts = [as_rate(r["strict"]["rate"]) for r in results if "strict" in r]
    strict = (
        Rate(sum(x.k for x in stricts), sum(x.n for x in stricts), sum(x.abstained for x in stricts))
        if len(stricts) == len(results)
        else None
    )
    return {
        "rate": Rate(k, n),
        "strict": strict,  # None unless every seed's cell has been judged by the strict judge
        "seeds": len(results),
        "mean": statistics.fmean(shares),
        "spread": (min(shares), max(shares)),
        "unet_evals": statistics.fmean(r["unet_evals"] for r in results),
        "seconds": statistics.fmean(r["seconds"] for r in results),
        "erase_seconds": statistics.fmean(r.get("erase_seconds", 0.0) for r in results),
        "erase_unet_evals": statistics.fmean(r.get("erase_unet_evals", 0) for r in results),
        "grid": results[0].get("grid"),
    }


def cell_text(c: dict) -> str:
    text = str(c["rate"])
    if c["seeds"] > 1:
        lo, hi = c["spread"]
        text += f"; {c['seeds']} erasure seeds: mean {c['mean']:.0%}, spread {lo:.0%}-{hi:.0%}"
    return text


def table(results: list, steps: int = STEPS) -> tuple[str, dict]:
    """Markdown (per concept: rates, then costs, then which differences are beyond the intervals) and the JSON summary."""
    from erasers.attacks import ATTACKS
    from erasers.evaluate import describe_differences

    groups: dict = {}
    for r in results:
        c = r["cell"]
        groups.setdefault((c["concept"], c["eraser"], c["attack"]), []).append(r)
    combined = {key: combine(rs) for key, rs in groups.items()}
    concepts = list(dict.fromkeys(k[0] for k in combined))
    lines = [
        (
            "The attack matrix on the toy world: each cell is the judged rate of images that show the erased concept over "
            "prompt-seed pairs (pre-attack + post-attack successes / pairs; 'none': the prompt's own image), with its count "
            f"and 95% Wilson interval; every attack at its toy budget, judged images DDIM {steps} steps, guidance 7.5; "
            "headline cells pool their erasure seeds (mean and spread of the per-seed rates beside them). "
            "Cost: the attack's UNet evaluations and seconds per cell (mean over erasure seeds), the erasure's once per model."
        ),
    ]
    summary = {"concepts": {}}
    for concept in concepts:
        erasers = list(dict.fromkeys(k[1] for k in combined if k[0] == concept))
        attacks = [a for a in ATTACKS if any((concept, e, a) in combined for e in erasers)]
        attacks += [a for a in dict.fromkeys(k[2] for k in combined if k[0] == concept) if a not in attacks]  # no longer registered
        label = lambda a: ATTACKS[a].label if a in ATTACKS else a
        lines += ["", f"## {concept}", "", "| eraser | " + " | ".join(label(a) for a in attacks) + " |", "|---|" + "---|" * len(attacks)]
        for e in erasers:
            lines.append(
                f"| {e} | "
                + " | ".join(cell_text(combined[(concept, e, a)]) if (concept, e, a) in combined else "-" for a in attacks)
                + " |"
            )
        if any(combined[(concept, e, a)]["strict"] for e in erasers for a in attacks if (concept, e, a) in combined):
            lines += [
                "",
                f"The same cells under the strict judge ({concept}): pairs whose deciding image both toy judges say shows the "
                "concept, over the pairs they decide, the abstentions apart ('-': not judged, soft-prompt cells made before "
                "their learned prefix was kept in the cell).",
                "",
                "| eraser | " + " | ".join(label(a) for a in attacks) + " |",
                "|---|" + "---|" * len(attacks),
            ]
            for e in erasers:
                strict = [combined[(concept, e, a)]["strict"] if (concept, e, a) in combined else None for a in attacks]
                lines.append(f"| {e} | " + " | ".join(str(x) if x else "-" for x in strict) + " |")
        lines += ["", f"Cost ({concept}): attack UNet evaluations / seconds per cell; erasure UNet evaluations / seconds.", ""]
        lines += ["| eraser | erasure | " + " | ".join(label(a) for a in attacks) + " |", "|---|---|" + "---|" * len(attacks)]
        for e in erasers:
            first = next(combined[(concept, e, a)] for a in attacks if (concept, e, a) in combined)
            cost = [
                f"{combined[(concept, e, a)]['unet_evals']:,.0f} / {combined[(concept, e, a)]['seconds']:.0f} s"
                if (concept, e, a) in combined
                else "-"
                for a in attacks
            ]
            lines.append(f"| {e} | {first['erase_unet_evals']:,.0f} / {first['erase_seconds']:.0f} s | " + " | ".join(cost) + " |")
        lines += ["", f"Which differences are beyond the intervals ({concept}):", ""]
        for a in attacks:
            named = {e: combined[(concept, e, a)]["rate"] for e in erasers if (concept, e, a) in combined}
            lines.append(f"- {label(a)}, between erasers: {describe_differences(named, 'rate')}")
        for e in erasers:
            named = {label(a): combined[(concept, e, a)]["rate"] for a in attacks if (concept, e, a) in combined}
            lines.append(f"- {e}, between attacks: {describe_differences(named, 'rate')}")
        summary["concepts"][concept] = {
            e: {
                a: {
                    **combined[(concept, e, a)]["rate"].as_dict(),
                    "text": cell_text(combined[(concept, e, a)]),
                    **{k: v for k, v in combined[(concept, e, a)].items() if k not in ("rate", "strict")},
                    "strict": combined[(concept, e, a)]["strict"].as_dict() if combined[(concept, e, a)]["strict"] else None,
                }
                for a in attacks
                if (concept, e, a) in combined
            }
            for e in erasers
        }
    wall = sum(r.get("cell_seconds", 0.0) for r in results)
    replays = [r["strict"]["replay_agreement"] for r in results if "replay_agreement" in r.get("strict", {})]
    if replays:
        from studio.stats import Rate

        agree = Rate(sum(a["k"] for a in replays), sum(a["n"] for a in replays))
        lines += [
            "",
            f"Strict verdicts of {len(replays)} cells come from their deciding images made again (`--rejudge`); the toy judge's "
            f"verdict on those images equals the cell's own for {agree} of pairs.",
        ]
        summary["replay_agreement"] = agree.as_dict()
    abst = [r["strict"]["rate"] for r in results if "strict" in r]
    if abst:
        summary["abstained"] = {"pairs": sum(d["n"] + d["abstained"] for d in abst), "abstained": sum(d["abstained"] for d in abst)}
    lines += [
        "",
        f"Wall time of the cells shown: {wall / 3600:.2f} h of cell time ({len(results)} cells; erasures included where a cell erased).",
    ]
    summary["wall_seconds"] = wall
    return "\n".join(lines), summary


def main(argv=None):
    import torch

    from erasers import METHODS
    from erasers.attacks import ATTACKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--erasers", default=None, help=f"comma-separated (default: {ORIGINAL} and every registered eraser)")
    ap.add_argument("--attacks", default=None, help="comma-separated (default: every registered attack, none first)")
    ap.add_argument("--concepts", default=",".join(CONCEPTS))
    ap.add_argument("--pairs", type=int, default=20, help="prompt-seed pairs of the other cells (default 20)")
    ap.add_argument("--headline-pairs", type=int, default=50, help="prompt-seed pairs of the headline cells (default 50)")
    ap.add_argument("--erasure-seeds", type=int, default=3, help="erasures (seeds) per headline cell (default 3)")
    ap.add_argument(
        "--only-seeds",
        default=None,
        help="run only the cells of these erasure seeds, e.g. 1 or 1,2 (two runs can then share the work; the report "
        "of a later run without it gathers every seed)",
    )
    ap.add_argument("--steps", type=int, default=STEPS, help=f"DDIM steps of every judged image (default {STEPS})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plan", action="store_true", help="print the cells left and their estimated cost, run nothing")
    ap.add_argument("--report", action="store_true", help="the table from the cells done so far, run nothing")
    ap.add_argument("--fresh", action="store_true", help="recompute cells that are cached")
    ap.add_argument(
        "--rejudge",
        action="store_true",
        help="judge cached cells that lack it with the strict judge (abstentions), their deciding images made again; then the table",
    )
    ap.add_argument("--name", default="attack_matrix", help="results name (benchmarks/results/<name>.md/.json)")
    args = ap.parse_args(argv)
    erasers = args.erasers.split(",") if args.erasers else [ORIGINAL, *METHODS]
    attacks = args.attacks.split(",") if args.attacks else ["none", *(a for a in ATTACKS if a != "none")]
    concepts = args.concepts.split(",")
    for e in erasers:
        if e != ORIGINAL and e not in METHODS:
            raise SystemExit(f"unknown eraser {e!r}; choose from {ORIGINAL}, {', '.join(METHODS)}")
    for a in attacks:
        if a not in ATTACKS:
            raise SystemExit(f"unknown attack {a!r}; choose from {', '.join(ATTACKS)}")
    for n, what in ((args.pairs, "--pairs"), (args.headline_pairs, "--headline-pairs"), (args.erasure_seeds, "--erasure-seeds")):
        if n < 1:
            raise SystemExit(f"{what} must be at least 1, got {n}")
    cells = plan_cells(erasers, attacks, concepts, args.pairs, args.headline_pairs, args.erasure_seeds)
    if args.only_seeds:
        only = {int(x) for x in args.only_seeds.split(",")}
        if not only <= set(range(args.erasure_seeds)):
            raise SystemExit(
                f"--only-seeds must lie in 0..{args.erasure_seeds - 1} (--erasure-seeds {args.erasure_seeds}), got {sorted(only)}"
            )
        cells = [c for c in cells if c.seed in only]
    if args.plan:
        est = estimate(cells, steps=args.steps)
        print(f"{est['cells']} cells, {est['done']} done, {est['left']} left")
        print(
            f"left: at most {est['unet_evals_left']:,} attack UNet evaluations, about {est['seconds_left'] / 3600:.1f} h on this machine "
            f"({est['seconds_per_unet_eval'] * 1000:.1f} ms per UNet evaluation, {'measured on the cells run here' if est['measured'] else 'a prior'}; "
            "erasures included)"
        )
        print("attack UNet evaluations left by attack: " + ", ".join(f"{a} {n:,}" for a, n in est["unet_evals_by_attack"].items()))
        if est["unknown_budget"]:
            print(f"attacks that state no budget (not in the estimate): {', '.join(est['unknown_budget'])}")
        for key in est["left_cells"][:20]:
            print("  " + key)
        if est["left"] > 20:
            print(f"  ... and {est['left'] - 20} more")
        return
    torch.set_num_threads(args.threads)
    if args.rejudge:
        t0 = time.time()
        print(f"{rejudge(cells)} cells judged again in {time.time() - t0:.0f} s")
    if args.report or args.rejudge:
        results = [json.loads(cell_path(c).read_text()) for c in cells if cell_path(c).is_file()]
    else:
        t0 = time.time()
        results = run_matrix(cells, make_cell_fn(Models(), args.steps), fresh=args.fresh)
        print(f"matrix done in {time.time() - t0:.0f} s")
    if not results:
        raise SystemExit("no cells done yet")
    from _util import write_results

    text, summary = table(results, args.steps)
    write_results(args.name, {**summary, "cells": results, "args": vars(args)}, text)


if __name__ == "__main__":
    main()
