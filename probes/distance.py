"""Distance to the oracle: is the erased model closer to a model that never saw the concept, or to the original?

"Are We Truly Forgetting?" and the unlearning literature measure unlearning against the model
retrained without the forget data. The toy world has that model (`studio.toyworld.oracle`), so here
every model is sampled on the same prompts and seeds and compared with the others:

  * the concept's direct prompts: the judged distribution of the concept's attribute (what is drawn
    instead: "circle 39% (31/80) [29, 50], star 16% ..."), its total-variation distance to each
    reference's distribution, and KID on judge features to each reference;
  * retain prompts (the other concepts of the same attribute): the share judged as asked, and KID
    on judge features to each reference.

    result = probes.run_probe("distance", erased_pipe, "triangle", references={"oracle": oracle_pipe, "original": toy_pipe})
    result.summary    # {"concept_kid_x1000": {"oracle": 3.1, "original": 41.0}, "closer_on_concept": "oracle", ...}

`closer_on_concept` names the reference whose concept-prompt KID is lower by more than two combined
standard errors, else "undecided".

KID (`studio.judges.kid`, x1000) is the unbiased paired estimator over (prompt, seed) pairs; its
standard error is estimated from random halves of the pairs (the spread of the half-sample estimates
divided by sqrt 2), so a KID within about two errors of 0 does not tell the two models apart. A
reference is a pipeline (sampled here, counted in the budget) or a `Drawn` from `draw` (sampled
before, e.g. the oracle once for many erased models).

This probe lives in `probes/` because it needs the oracle; the robustness report (`erasers/evaluate.py`)
cannot import probes, so it reaches this only through `studio probe --probes distance`.
"""

from dataclasses import asdict, dataclass, field

import numpy as np

from studio.judges import kid
from studio.progress import event
from studio.sampling import sample_many
from studio.stats import Rate, format_rate

from .common import Counter, ProbeResult, check_positive, erasable_concept


@dataclass
class DistanceConfig:
    """Sample every model on the concept's prompts and on retain prompts, with the same seeds."""

    prompts: int = 20  # direct prompts of the concept
    retain_prompts: int = 5  # direct prompts of each other concept of the same attribute
    seeds: int = 4  # images per prompt: seed, seed+1, ...
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    halves: int = 50  # random halves of the pairs, for KID's standard error
    batch_size: int = 64
    max_unet_evals: int | None = None  # over every model sampled here (the references given as pipelines too)

    def __post_init__(self):
        check_positive(self.prompts, "prompts", 20)
        check_positive(self.retain_prompts, "retain_prompts", 5)
        check_positive(self.num_inference_steps, "num_inference_steps", 50)
        check_positive(self.batch_size, "batch_size", 64)
        check_positive(self.halves, "halves", 50)
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1 or self.prompts * self.seeds < 4:
            raise ValueError(f"KID needs at least 4 images per set; got prompts={self.prompts} x seeds={self.seeds!r}; e.g. seeds=4")

    def images_per_model(self, concept: str) -> int:
        sets = prompt_sets(concept, self)
        return self.seeds * (len(sets["concept"]) + len(sets["retain"]))

    def sampling_steps(self, concept: str) -> int:
        """Denoising steps of one model's sampling (batches x steps), the unit of the progress events."""
        sets = prompt_sets(concept, self)
        return sum(-(-len(sets[p]) * self.seeds // self.batch_size) for p in ("concept", "retain")) * self.num_inference_steps

    def planned_unet_evals(self, concept: str = "triangle", models: int = 1) -> int:
        per = 2 if self.guidance_scale > 1.0 else 1
        return models * self.images_per_model(concept) * self.num_inference_steps * per


def prompt_sets(name: str, cfg: DistanceConfig) -> dict:
    """{"concept": [prompts], "retain": [prompts]} and, for retain, which value each asks for (`asked`)."""
    from studio.toyworld.captions import prompts_for
    from studio.toyworld.grammar import ATTRIBUTES

    c = erasable_concept(name)
    retain = [
        (p, other) for other in ATTRIBUTES[c.attribute] if other != c.name for p, _ in prompts_for(other, "direct", cfg.retain_prompts)
    ]
    return {
        "concept": [p for p, _ in prompts_for(c.name, "direct", cfg.prompts)],
        "retain": [p for p, _ in retain],
        "asked": [a for _, a in retain],
    }


@dataclass
class Drawn:
    """One model's images on the probe's prompts and seeds, judged: what `run` compares."""

    label: str
    concept: str
    attribute: str
    drawn: list  # the judged attribute value of every concept-prompt image
    retain_hits: list  # per retain image: judged as asked
    retain_asked: list
    features: dict  # "concept" / "retain" -> (N, d) judge features
    images: dict = field(default_factory=dict)  # "concept" / "retain" -> PIL images
    settings: dict = field(default_factory=dict)


def judge_features(judge, images) -> np.ndarray:
    """The judge's penultimate features (`studio.judges` judges have `features`; a bare `ToyJudge` its net's)."""
    if hasattr(judge, "features"):
        return np.asarray(judge.features(images))
    import torch

    from studio.toyworld.judge import to_judge_input

    with torch.no_grad():
        x = to_judge_input(images).to(judge.device)
        return torch.cat([judge.net.features(x[i : i + 256]) for i in range(0, len(x), 256)]).cpu().numpy()


def draw(
    pipe, concept: str, cfg: DistanceConfig, judge, *, label: str = "model", counter=None, callback=None, cancel=None, offset=0, total=None
):
    """Sample and judge `pipe` on the concept's prompts and the retain prompts (`Drawn`)."""
    c = erasable_concept(concept)
    sets = prompt_sets(c.name, cfg)
    seeds = [cfg.seed + s for s in range(cfg.seeds)]
    out = {}
    done = offset
    for part in ("concept", "retain"):
        n_steps = -(-len(sets[part]) * len(seeds) // cfg.batch_size) * cfg.num_inference_steps

        def relay(info, base=done, part=part):
            if callback is not None:
                callback(event("distance", base + info["step"], total, model=label, prompts=part))

        out[part] = sample_many(
            pipe,
            sets[part],
            seeds,
            batch_size=cfg.batch_size,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            callback=relay,
            cancel=cancel,
        )
        done += n_steps
        if counter is not None:
            counter.add(len(out[part]) * cfg.num_inference_steps * (2 if cfg.guidance_scale > 1.0 else 1))
    preds = judge.predict(out["concept"])
    retain_preds = judge.predict(out["retain"])
    asked = [a for a in sets["asked"] for _ in seeds]
    return Drawn(
        label=label,
        concept=c.name,
        attribute=c.attribute,
        drawn=[p[c.attribute] for p in preds],
        retain_hits=[p[c.attribute] == a for p, a in zip(retain_preds, asked)],
        retain_asked=asked,
        features={part: judge_features(judge, out[part]) for part in out},
        images=out,
        settings={k: v for k, v in asdict(cfg).items() if k not in ("max_unet_evals", "batch_size", "halves")},
    )


def distribution(d: Drawn) -> dict:
    """value -> Rate.as_dict() of the judged attribute on the concept's prompts (every value of the attribute, and 'none')."""
    from studio.toyworld.grammar import ATTRIBUTES

    values = list(ATTRIBUTES[d.attribute]) + (["none"] if "none" in d.drawn else [])
    return {v: Rate(sum(x == v for x in d.drawn), len(d.drawn)).as_dict() for v in values}


def total_variation(a: dict, b: dict) -> float:
    """Half the L1 distance between two judged distributions (0: the same, 1: disjoint)."""
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, {}).get("rate", 0.0) - b.get(k, {}).get("rate", 0.0)) for k in keys)


def kid_with_error(fa: np.ndarray, fb: np.ndarray, halves: int = 50, seed: int = 0) -> dict:
    """KID x1000 over paired samples, and a standard error from `halves` random halves of the pairs."""
    n = min(len(fa), len(fb))
    if len(fa) != len(fb):
        raise ValueError(
            f"the two models were sampled on different prompt sets ({len(fa)} vs {len(fb)} images); use the same DistanceConfig"
        )
    value = 1000 * kid(fa, fb, subsets=1, paired=True)
    rng = np.random.default_rng(seed)
    m = n // 2
    ests = (
        [1000 * kid(fa[idx], fb[idx], subsets=1, paired=True) for idx in (rng.choice(n, m, replace=False) for _ in range(halves))]
        if m >= 2
        else []
    )
    se = float(np.std(ests, ddof=1) / np.sqrt(2)) if len(ests) > 1 else float("nan")
    return {"kid_x1000": float(value), "se_x1000": se, "pairs": n}


def _check_same(a: Drawn, b: Drawn) -> None:
    if a.settings != b.settings or a.concept != b.concept:
        raise ValueError(
            f"{a.label!r} and {b.label!r} were drawn with different settings or concepts ({a.concept}, {b.concept}); "
            "draw every model with the same DistanceConfig"
        )


def compare(drawn: dict, subject: str, halves: int = 50) -> dict:
    """Every model's own numbers, and the distances between every pair (`drawn`: label -> Drawn)."""
    labels = list(drawn)
    models = {}
    for label, d in drawn.items():
        dist = distribution(d)
        models[label] = {
            "drawn": dist,
            "shown": dist[d.concept],
            "retained": Rate(int(sum(d.retain_hits)), len(d.retain_hits)).as_dict(),
        }
    pairs = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            _check_same(drawn[a], drawn[b])
            pairs[f"{a}~{b}"] = {
                "a": a,
                "b": b,
                "concept": {
                    **kid_with_error(drawn[a].features["concept"], drawn[b].features["concept"], halves),
                    "tv": total_variation(models[a]["drawn"], models[b]["drawn"]),
                },
                "retain": kid_with_error(drawn[a].features["retain"], drawn[b].features["retain"], halves),
            }
    return {"attribute": drawn[subject].attribute, "subject": subject, "models": models, "pairs": pairs}


def pair(measurements: dict, a: str, b: str) -> dict | None:
    ps = measurements["pairs"]
    return ps.get(f"{a}~{b}") or ps.get(f"{b}~{a}")


def summarise(measurements: dict) -> dict:
    """The subject's KIDs and TV to each other model, and which it is closer to on the concept's prompts."""
    subject = measurements["subject"]
    out = {"shown": measurements["models"][subject]["shown"]["rate"], "retained": measurements["models"][subject]["retained"]["rate"]}
    for label in measurements["models"]:
        if label == subject:
            continue
        p = pair(measurements, subject, label)
        out.setdefault("concept_kid_x1000", {})[label] = p["concept"]["kid_x1000"]
        out.setdefault("concept_tv", {})[label] = p["concept"]["tv"]
        out.setdefault("retain_kid_x1000", {})[label] = p["retain"]["kid_x1000"]
    if "oracle" in measurements["models"] and "original" in measurements["models"] and subject not in ("oracle", "original"):
        out["closer_on_concept"] = closer(
            pair(measurements, subject, "oracle")["concept"], pair(measurements, subject, "original")["concept"]
        )
    return out


def closer(to_oracle: dict, to_original: dict, z: float = 2.0) -> str:
    """ "oracle" or "original" when the two concept-prompt KIDs differ by more than `z` combined standard
    errors, else "undecided" (the sample does not tell them apart)."""
    diff = to_original["kid_x1000"] - to_oracle["kid_x1000"]
    se = float(np.hypot(to_oracle["se_x1000"], to_original["se_x1000"]))
    if not np.isfinite(se) or abs(diff) <= z * se:
        return "undecided"
    return "oracle" if diff > 0 else "original"


def run(
    pipe,
    concept: str,
    config: DistanceConfig | None = None,
    *,
    judge=None,
    callback=None,
    cancel=None,
    progress=False,
    references: dict | None = None,
    label: str = "erased",
    **_,
) -> ProbeResult:
    """Sample `pipe` (as `label`) and every reference (a pipeline, or a `Drawn` with the same config)
    on the same prompts and seeds; see the module docstring."""
    cfg = config or DistanceConfig()
    c = erasable_concept(concept)
    references = dict(references or {})
    if label in references:
        raise ValueError(f"the model is called {label!r} and so is a reference; give it another label=")
    if judge is None:
        from . import default_judge

        judge = default_judge()
    to_sample = [(label, pipe)] + [(k, v) for k, v in references.items() if not isinstance(v, Drawn)]
    counter = Counter(cfg.max_unet_evals)
    counter.check_plan(cfg.planned_unet_evals(c.name, len(to_sample)), "the distance probe")
    per_model = cfg.sampling_steps(c.name)
    drawn = {}
    for i, (name, model) in enumerate(to_sample):
        drawn[name] = draw(
            model,
            c.name,
            cfg,
            judge,
            label=name,
            counter=counter,
            callback=callback,
            cancel=cancel,
            offset=i * per_model,
            total=per_model * len(to_sample),
        )
    drawn.update({name: d for name, d in references.items() if isinstance(d, Drawn)})
    return assemble({name: drawn[name] for name in [label, *references]}, label, cfg, counter)


def assemble(drawn: dict, subject: str, cfg: DistanceConfig, counter: Counter | None = None) -> ProbeResult:
    """The `ProbeResult` of models drawn before (`drawn`: label -> Drawn, the subject among them)."""
    if subject not in drawn:
        raise ValueError(f"no model called {subject!r} among {', '.join(drawn)}")
    first = drawn[subject]
    measurements = compare(drawn, subject, cfg.halves)
    stats = (counter or Counter()).stats(images=sum(len(d.drawn) + len(d.retain_hits) for d in drawn.values()))
    result = ProbeResult("distance", first.concept, asdict(cfg), measurements, summarise(measurements), stats)
    prompts = prompt_sets(first.concept, cfg)["concept"]
    shown = min(cfg.seeds, 6)
    result.grid_cols = [f"seed {cfg.seed + s}" for s in range(shown)]
    for name, d in drawn.items():
        for j in range(min(2, len(prompts)) if d.images else 0):
            cells = [(d.images["concept"][j * cfg.seeds + s], d.drawn[j * cfg.seeds + s]) for s in range(shown)]
            result.grid_rows.append((f"{name}: {prompts[j]}", cells))
    return result


def distribution_text(drawn: dict, top: int = 5) -> str:
    """'circle 39% (31/80) [29, 50], star 16% (13/80) [10, 26], ...' (the most drawn first, zeros left out)."""
    items = sorted(((v, r) for v, r in drawn.items() if r["k"]), key=lambda kv: -kv[1]["k"])
    text = ", ".join(f"{v} {format_rate(r['k'], r['n'])}" for v, r in items[:top])
    rest = sum(r["k"] for _, r in items[top:])
    return text + (f", others {rest}" if rest else "")


def kid_text(d: dict) -> str:
    return f"{d['kid_x1000']:.1f} ± {d['se_x1000']:.1f}"


def format_result(result: ProbeResult) -> str:
    m = result.measurements
    subject = m["subject"]
    parts = []
    for label, v in m["models"].items():
        parts.append(
            f"{label}: draws {distribution_text(v['drawn'])}; retain as asked {format_rate(v['retained']['k'], v['retained']['n'])}"
        )
    for label in m["models"]:
        if label != subject:
            p = pair(m, subject, label)
            parts.append(
                f"{subject} to {label}: concept KID x1000 {kid_text(p['concept'])}, TV {p['concept']['tv']:.2f}; retain KID x1000 {kid_text(p['retain'])}"
            )
    return "distance: " + "; ".join(parts) + "."


__all__ = [
    "DistanceConfig",
    "Drawn",
    "assemble",
    "compare",
    "distribution",
    "draw",
    "format_result",
    "kid_with_error",
    "run",
    "total_variation",
]
