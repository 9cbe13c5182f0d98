"""Erase until erased: stop an eraser's training on a measured target instead of a fixed budget.

    stop = toy_stop_when("circle", target_rate=0.05, min_retained=0.9, check_every=10)
    result = erase(pipe, toy_target("esd-x", "circle"), "esd-x", preset="toy", stop_when=stop)
    result.stats["stop"]   # {"reason": "erased" | "utility" | "budget", "step", "kept_step", "checks": [...], ...}

Every `check_every` steps (and before the first step and after the last), `TrainLoop` samples the model being
trained on a held-in set of check prompts and asks a judge how many images still show the concept. Training
stops at the first check whose rate is at most `target_rate` ("erased"). With `min_retained`, the same checks
sample retain prompts too; when their retained accuracy falls below `min_retained` x the original's (measured
at step 0) beyond its 95% Wilson interval (`guard_rule="interval"`, the preset sweep's bar; "point" compares the
ratio alone), training stops and the trained weights go back to the last check that met the guard ("utility").
A run that reaches its budget without either ends with "budget". `iterations` of the method's config is the
ceiling: raise it to give the rule room.

Retained accuracy is the judge's verdict where it can read labels (the toy judge's `predict` against the
attributes the prompt asks for, as `erasers.evaluate` scores utility); a judge without labels (NudeNet) keeps a
retain image when it stays within `psnr_floor` dB of the original model's image on the same prompt and seed.

Held in, kept apart from the evaluation: the toy check prompts come from the toy grammar's training templates
(`grammar.TEMPLATES`) that the evaluation's prompt sets (`captions.prompts_for`, every form) never produce, and
every prompt string the evaluation could ask for is removed; their seeds start at `seed` = 1000, and the
evaluation draws seeds from `EvalConfig.seed` = 0 upward (4 per prompt; its attack uses seeds 0..9). Neither
the prompts nor the seeds of the checks are ever those of the report.

The checks' cost (UNet evaluations, seconds) is added to the run's `unet_evals` and `seconds` and shown apart in
`stats["stop"]`. Closed-form erasers (uce, rece) have no steps to stop: `check_method` refuses them with a
clear error (their trade-off is a choice of scale, made once: `benchmarks/preset_sweep.py`).
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from studio.images import psnr
from studio.stats import Rate, below, format_rate

# how the guard reads a check's retained accuracy against min_retained x the original's (step 0): `guard_ok`
GUARD_RULES = ("interval", "point")

REASONS = {
    "erased": "the concept was erased",
    "utility": "utility fell below the guard; the last checkpoint that met it was restored",
    "budget": "the budget ran out before the concept was erased",
}


@dataclass
class StopWhen:
    """When to stop: the concept's rate on held-in check prompts, and a utility guard on retain prompts."""

    target_rate: float = 0.05  # stop when at most this share of the check images shows the concept
    min_retained: float | None = 0.9  # guard: retained accuracy >= this x the original's (step 0); None: no guard
    check_every: int = 10  # training steps between checks (also at step 0 and after the last step)
    prompts: list = field(default_factory=list)  # check prompts asking for the concept (held in)
    retain: list = field(default_factory=list)  # retain prompts: "prompt" or ("prompt", {attribute: value}) pairs
    judge: object = "toy"  # a name of studio.judges.JUDGES, or a judge object (`shows`, optionally `predict`)
    concept: str | None = None  # the judge's concept name; default: the toy concept the prompts name, "nudity" for NudeNet
    seeds: int = 2  # images per check prompt
    seed: int = 1000  # first seed of the checks (the evaluation's start at 0)
    num_inference_steps: int = 20  # DDIM steps of the check images
    guidance_scale: float = 7.5
    batch_size: int = 32
    psnr_floor: float = 20.0  # a judge without labels: a retain image is kept when within this many dB of the original's
    guard_rule: str = "interval"  # "interval": fails on evidence (Wilson upper bound below the bar); "point": the ratio

    def __post_init__(self):
        self.prompts = [self.prompts] if isinstance(self.prompts, str) else [p for p in self.prompts if p and p.strip()]
        self.retain = [
            (r, {}) if isinstance(r, str) else (r[0], dict(r[1])) for r in ([self.retain] if isinstance(self.retain, str) else self.retain)
        ]
        if isinstance(self.target_rate, bool) or not isinstance(self.target_rate, (int, float)) or not 0 <= self.target_rate <= 1:
            raise ValueError(
                f"stop_when target_rate={self.target_rate!r} is outside [0, 1]; give the share of check images that may still show the concept, e.g. 0.05"
            )
        if self.min_retained is not None and (
            isinstance(self.min_retained, bool) or not isinstance(self.min_retained, (int, float)) or not 0 < self.min_retained <= 1
        ):
            raise ValueError(
                f"stop_when min_retained={self.min_retained!r} is outside (0, 1]; give the share of the original's retained accuracy to keep, "
                "e.g. 0.9, or None for no utility guard"
            )
        if isinstance(self.check_every, bool) or not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"stop_when check_every={self.check_every!r} must be a whole number of steps >= 1, e.g. 10")
        for name in ("seeds", "num_inference_steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"stop_when {name}={value!r} must be a whole number >= 1")
        if self.guard_rule not in GUARD_RULES:
            raise ValueError(f"stop_when guard_rule={self.guard_rule!r}: use one of {', '.join(GUARD_RULES)}")
        if not self.prompts:
            raise ValueError(
                "stop_when has no check prompts; give prompts=[...] that ask for the concept (toy_stop_when(name) builds them)"
            )
        if self.min_retained is not None and not self.retain:
            raise ValueError(
                "stop_when min_retained needs retain prompts to guard: give retain=[...] (prompts whose outputs must survive), "
                "or min_retained=None for no utility guard"
            )

    def settings(self) -> dict:
        """What `erasure.json`, the checkpoint and the report record (the judge by name)."""
        judge = self.judge if isinstance(self.judge, str) else getattr(self.judge, "name", type(self.judge).__name__)
        return {
            "target_rate": self.target_rate,
            "min_retained": self.min_retained,
            "check_every": self.check_every,
            "judge": judge,
            "concept": self.concept,
            "prompts": list(self.prompts),
            "retain": [[p, a] for p, a in self.retain],
            "seeds": self.seeds,
            "seed": self.seed,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "psnr_floor": self.psnr_floor,
            "guard_rule": self.guard_rule,
        }

    def cost(self) -> int:
        """UNet evaluations of one check."""
        images = (len(self.prompts) + len(self.retain)) * self.seeds
        return images * self.num_inference_steps * (2 if self.guidance_scale > 1 else 1)


def check_method(method: str) -> None:
    """A clear error for a method that has no steps to stop: each method's module says, with `STOP_WHEN`
    (True, or why not), whether its `erase` takes a stop rule."""
    from . import METHODS, stops_when

    why = stops_when(method)
    if why is not True:
        able = ", ".join(m for m in METHODS if stops_when(m) is True)
        raise ValueError(f"{method} {why}, so stop_when has nothing to stop; drop --until / stop_when, or choose one of {able}")


# ---------------------------------------------------------------- the toy world's held-in check prompts


def evaluation_prompts(name: str) -> set:
    """Every prompt string the evaluation (`erasers.evaluate.toy_spec`, any budget) can ask for concept `name`."""
    from studio.toyworld.captions import FORMS, prompts_for

    return {p for form in FORMS for p, _ in prompts_for(name, form)}


def held_in_prompts(name: str, n: int, offset: int = 0) -> list:
    """`n` (prompt, labels asked) pairs for toy concept `name` from the training templates, none of which the
    evaluation uses: templates that name the concept, with the other attributes cycling (seeded), minus every
    prompt string of the evaluation's sets for `name`."""
    import itertools

    from studio.toyworld.captions import article
    from studio.toyworld.grammar import ATTRIBUTES, TEMPLATES, concept

    c = concept(name)
    banned = evaluation_prompts(c.name)
    templates = [t for t in TEMPLATES if "{" + c.attribute + "}" in t]
    others = [a for a in ATTRIBUTES if a != c.attribute]
    combos = [dict(zip(others, v)) for v in itertools.product(*[ATTRIBUTES[a] for a in others])]
    order = np.random.default_rng(1000 + offset).permutation(len(combos))
    out, seen = [], set()
    for i, j in enumerate(order):
        fill = {**combos[j], c.attribute: c.name}
        template = templates[i % len(templates)]
        text = article(template.format(**fill))
        if text in banned or text in seen:
            continue
        seen.add(text)
        out.append((text, {a: fill[a] for a in ATTRIBUTES if "{" + a + "}" in template and a in ("shape", "colour", "style")}))
        if len(out) == n:
            break
    return out


def toy_stop_when(
    name: str,
    target_rate: float = 0.05,
    min_retained: float | None = 0.9,
    check_every: int = 10,
    *,
    prompts: int = 8,
    retain_per_concept: int = 2,
    **kw,
) -> StopWhen:
    """The toy world's stop rule for concept `name`: `prompts` held-in check prompts of the concept, and
    `retain_per_concept` held-in prompts of each other concept of its kind for the guard, judged on the erased
    kind and shape/colour (as the evaluation's utility)."""
    from studio.toyworld.grammar import concept, concepts_of

    c = concept(name)
    judged = {c.attribute, "colour" if c.attribute == "shape" else "shape"}
    checks = [p for p, _ in held_in_prompts(c.name, prompts)]
    retain = []
    if min_retained is not None:
        for other in concepts_of(c.attribute):
            if other.name != c.name:
                retain += [(p, {k: v for k, v in a.items() if k in judged}) for p, a in held_in_prompts(other.name, retain_per_concept)]
    return StopWhen(target_rate, min_retained, check_every, prompts=checks, retain=retain, concept=c.name, **kw)


def from_settings(settings: dict) -> StopWhen:
    """A `StopWhen` from the dict of `settings()` (a job file's or an `erasure.json`'s)."""
    settings = dict(settings)
    settings["retain"] = [tuple(r) if isinstance(r, list) else r for r in settings.get("retain", [])]
    return StopWhen(**settings)


# ---------------------------------------------------------------- the rule, run by TrainLoop


def _judge_of(when: StopWhen):
    if not isinstance(when.judge, str):
        return when.judge
    from studio.judges import get_judge

    return get_judge(when.judge)


def _concept_of(when: StopWhen, judge, concept) -> str:
    if when.concept:
        return when.concept
    if getattr(judge, "name", None) == "nudenet":
        return "nudity"
    from studio.toyworld.grammar import find_concept

    name = find_concept(list(when.prompts) + list(getattr(concept, "prompts", [])))
    if name is None:
        raise ValueError("stop_when cannot tell which concept the judge should look for; give concept=... (e.g. 'nudity')")
    return name


class StopRule:
    """The running rule: `check(step)` samples `pipe` as it is now and records the check; `TrainLoop` calls it
    at the due steps, keeps the state (`state`, JSON) in its checkpoints and restores the last good weights."""

    def __init__(self, when: StopWhen, pipe, concept=None):
        self.when, self.pipe = when, pipe
        self.judge = _judge_of(when)
        self.concept = _concept_of(when, self.judge, concept)
        self.labels = any(a for _, a in when.retain) and hasattr(self.judge, "predict")
        self.reference = None  # the original's retain images (no labels: PSNR guard), uint8 (N, H, W, 3)
        self.state = {"checks": [], "baseline": None, "good_step": None, "stopped": None, "unet_evals": 0, "seconds": 0.0}

    def due(self, step: int, total: int) -> bool:
        return step % self.when.check_every == 0 or step >= total

    def _sample(self, prompts):
        from studio.sampling import sample_many

        w = self.when
        seeds = [w.seed + s for s in range(w.seeds)]
        return sample_many(
            self.pipe, prompts, seeds, batch_size=w.batch_size, num_inference_steps=w.num_inference_steps, guidance_scale=w.guidance_scale
        )

    @torch.no_grad()
    def check(self, step: int) -> dict:
        """Sample the check and retain prompts, judge them, and record {"step", "rate", "shown", "n", "retained", ...}."""
        from .evaluate import all_match

        t0 = time.time()
        modules = [m for m in (getattr(self.pipe, "unet", None), getattr(self.pipe, "text_encoder", None)) if m is not None]
        training = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            w = self.when
            images = self._sample(w.prompts)
            shown = np.asarray(self.judge.shows(images, self.concept), bool)
            record = {"step": step, "shown": int(shown.sum()), "n": len(shown), "rate": float(shown.mean())}
            if w.retain:
                kept = self._sample([p for p, _ in w.retain])
                if self.labels:
                    asked = [a for _, a in w.retain for _ in range(w.seeds)]
                    hits = [all_match(p, a) for p, a in zip(self.judge.predict(kept), asked)]
                else:
                    arrays = np.stack([np.asarray(im.convert("RGB")) for im in kept])
                    if self.reference is None:
                        self.reference = arrays
                    hits = [psnr(a, b) >= w.psnr_floor for a, b in zip(arrays, self.reference)]
                record.update(retained=float(np.mean(hits)), retained_k=int(np.sum(hits)), retained_n=len(hits))
        finally:
            for m, t in zip(modules, training):
                m.train(t)
        if self.state["baseline"] is None:
            self.state["baseline"] = {k: record[k] for k in ("rate", "retained") if k in record}
        base = self.state["baseline"].get("retained")
        if "retained" in record:
            record["retained_ratio"] = record["retained"] / max(base, 1e-9)
        record["erased"] = record["rate"] <= w.target_rate
        record["guard_ok"] = guard_ok(w, record, base)
        record["seconds"] = round(time.time() - t0, 3)
        record["unet_evals"] = w.cost()
        self.state["checks"].append(record)
        self.state["unet_evals"] += record["unet_evals"]
        self.state["seconds"] = round(self.state["seconds"] + record["seconds"], 3)
        return record

    def summary(self) -> dict:
        """`stats["stop"]`: the settings, why it stopped, at which step, the weights kept, and every check."""
        s, checks = self.state, self.state["checks"]
        last = checks[-1] if checks else {}
        stopped = s["stopped"] or {}
        return {
            "settings": self.when.settings(),
            "reason": stopped.get("reason"),
            "why": REASONS.get(stopped.get("reason"), ""),
            "step": stopped.get("step"),
            "kept_step": stopped.get("kept_step"),
            "final_rate": last.get("rate"),
            "final_retained_ratio": last.get("retained_ratio"),
            "checks": checks,
            "unet_evals": s["unet_evals"],
            "seconds": s["seconds"],
        }


def guard_ok(when: StopWhen, record: dict, baseline) -> bool:
    """Does a check keep the utility guard? With the "interval" rule (the default) it fails only when the retained
    rate is below `min_retained` x the original's beyond its 95% Wilson interval (`studio.stats.below`, the preset
    sweep's bar): a check's 8-16 retain images make one image 6-12% of the rate, and the point rule stopped 7 of 8
    toy DoCo runs on a one- or two-image dip, the final evaluation then keeping 0.97-1.00 of the original's retained
    accuracy (benchmarks/until_erased.py, the point-guard run in the history of results/until_erased.md).
    "point": the ratio of rates against `min_retained`."""
    if when.min_retained is None or "retained" not in record:
        return True
    if when.guard_rule == "point":
        return record["retained_ratio"] >= when.min_retained
    return not below(Rate(record["retained_k"], record["retained_n"]), when.min_retained * baseline)


def describe_check(record: dict) -> str:
    """One line: 'step 20: concept shown 6% (1/16) [1, 28]; retained 94% (15/16) [72, 99], ratio 0.94'."""
    text = f"step {record['step']}: concept shown {format_rate(record['shown'], record['n'])}"
    if "retained" in record:
        text += f"; retained {format_rate(record['retained_k'], record['retained_n'])}, ratio {record['retained_ratio']:.2f}"
    return text


def report_lines(stop: dict) -> list:
    """What the erasure report says about a stop rule (stats["stop"])."""
    if not stop:
        return []
    s = stop["settings"]
    guard = (
        f", guard retained >= {s['min_retained']:.0%} of the original's{' (beyond its 95% interval)' if s.get('guard_rule', 'point') == 'interval' else ''}"
        if s.get("min_retained") is not None
        else ", no utility guard"
    )
    lines = [
        (
            f"Stop rule: concept shown <= {s['target_rate']:.0%} on {len(s['prompts'])} held-in prompts x {s['seeds']} seeds (judge {s['judge']}), "
            f"checked every {s['check_every']} steps{guard}."
        ),
        (
            f"Stopped at step {stop['step']}: {stop['why']}; weights of step {stop['kept_step']} kept. "
            f"{len(stop['checks'])} checks cost {stop['unet_evals']:,} UNet evaluations, {stop['seconds']:.0f} s."
        ),
    ]
    kept = [c for c in stop["checks"] if c["step"] == stop["kept_step"]]
    if kept:
        lines.append("Kept weights' check: " + describe_check(kept[-1]) + ".")
    return lines


def rate_of(record: dict) -> Rate:
    return Rate(record["shown"], record["n"])


def stop_rule(stop_when: StopWhen | None, pipe, concept=None) -> StopRule | None:
    """What an eraser hands to `TrainLoop(stop=...)`: the running rule for `stop_when`, or None without one."""
    if stop_when is None:
        return None
    if isinstance(stop_when, dict):
        stop_when = from_settings(stop_when)
    if not isinstance(stop_when, StopWhen):
        raise TypeError(f"stop_when must be a StopWhen (erasers.stopping) or a dict of its settings, got {type(stop_when).__name__}")
    return StopRule(stop_when, pipe, concept)


def stop_when_for(
    toy: bool, concept, target_rate: float, min_retained: float | None = 0.9, check_every: int = 10, judge="toy", **kw
) -> StopWhen:
    """The stop rule the CLI, job files and the app build for `concept` (a `Concept`): on the toy model, the toy
    world's held-in prompts of the toy concept its prompts name (`toy_stop_when`); on another model, the concept's
    own prompts (its training prompts: held in) and its retain prompts, judged by `judge` (e.g. "nudenet")."""
    if toy:
        from studio.toyworld.grammar import find_concept

        name = find_concept(concept.prompts)
        if name is None:
            raise ValueError(
                f"stop_when on the toy model judges toy-world concepts, and {concept.prompts!r} names none; name a shape, colour or style"
            )
        return toy_stop_when(name, target_rate, min_retained, check_every, judge=judge, **kw)
    if judge == "toy":
        raise ValueError(
            "the toy judge only judges the toy world; to stop on a real model give a judge for its concept, e.g. --judge nudenet"
        )
    prompts = kw.pop("prompts", None) or list(concept.prompts)
    retain = kw.pop("retain", None) or list(concept.retain)
    if min_retained is not None and not retain:
        raise ValueError(
            "the utility guard (min_retained) needs retain prompts on a real model: give --retain 'a photo of a person in a coat' "
            "(repeatable; retain = [...] in a job file), or --min-retained 0 for no guard"
        )
    return StopWhen(target_rate, min_retained, check_every, prompts=prompts, retain=retain, judge=judge, **kw)
