"""What a toy oracle is: the shipped model's text encoder and UNet retrained from scratch on the toy
world's data without one concept (`studio toyworld train --without triangle`), the gold standard of
the unlearning literature ("retrain without the forget set").

    summary = oracle_summary(load_pipeline("assets/toy-oracle-triangle"), ToyJudge.load(), "triangle")

`oracle_summary` says what the oracle draws when asked for the concept it never saw (the judged
distribution of that attribute) and how well it still draws everything else, with counts and 95%
Wilson intervals, beside the same numbers for the shipped model when it is given.
"""

import json
from collections import Counter
from pathlib import Path

from ..paths import ASSETS
from ..sampling import sample_many
from ..stats import Rate, format_rate
from .captions import prompts_for
from .grammar import ATTRIBUTES, concept


def oracle_path(name: str) -> Path:
    """Where the shipped oracle of toy concept `name` lives (it may not be there)."""
    return ASSETS / f"toy-oracle-{concept(name).name}"


def oracle_info(path) -> dict:
    marker = Path(path) / "oracle.json"
    if not marker.is_file():
        raise ValueError(f"{path} is not a toy oracle (no oracle.json); train one with `studio toyworld train --without CONCEPT`")
    return json.loads(marker.read_text())


def oracle_summary(pipe, judge, name: str, *, seeds: int = 4, prompts: int = 20, steps: int = 50, guidance: float = 7.5) -> dict:
    """Judged distribution on the concept's direct prompts, and the match rate on the other concepts'
    direct prompts of the same attribute (their own attribute judged as asked)."""
    c = concept(name)
    seed_list = list(range(2000, 2000 + seeds))
    asked = [p for p, _ in prompts_for(c.name, "direct", prompts)]
    kw = dict(batch_size=64, num_inference_steps=steps, guidance_scale=guidance)
    preds = judge.predict(sample_many(pipe, asked, seed_list, **kw))
    drawn = Counter(p[c.attribute] for p in preds)
    out = {
        "concept": c.name,
        "attribute": c.attribute,
        "pairs": len(preds),
        "drawn": {v: drawn.get(v, 0) for v in (*ATTRIBUTES[c.attribute], "none")},
        "shown": Rate(drawn.get(c.name, 0), len(preds)).as_dict(),
        "others": {},
        "settings": {"seeds": seeds, "prompts": prompts, "steps": steps, "guidance": guidance, "sampler": "DDIM"},
    }
    for other in ATTRIBUTES[c.attribute]:
        if other == c.name:
            continue
        cases = prompts_for(other, "direct", max(4, prompts // 2))
        got = judge.predict(sample_many(pipe, [p for p, _ in cases], seed_list, **kw))
        k = sum(g[c.attribute] == other for g in got)
        out["others"][other] = Rate(k, len(got)).as_dict()
    k = sum(r["k"] for r in out["others"].values())
    n = sum(r["n"] for r in out["others"].values())
    out["retained"] = Rate(k, n).as_dict()
    return out


def format_summary(s: dict, label: str = "oracle") -> str:
    """One line: '<label> without triangle: triangle 3% (2/80) [1, 9]; draws square 40, star 22, ...; others 95% (...)'."""
    drawn = ", ".join(f"{v} {k}" for v, k in sorted(s["drawn"].items(), key=lambda kv: -kv[1]) if k)
    shown, kept = s["shown"], s["retained"]
    return (
        f"{label}: '{s['concept']}' prompts show it {format_rate(shown['k'], shown['n'])}; judged {s['attribute']}: {drawn}; "
        f"other {s['attribute']}s as asked {format_rate(kept['k'], kept['n'])}"
    )
