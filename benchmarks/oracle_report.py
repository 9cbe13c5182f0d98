"""The toy oracles beside the shipped model: what each draws when asked for the concept it never saw,
and how well it draws the rest of that attribute (judged, with counts and 95% Wilson intervals).

    OMP_NUM_THREADS=1 python benchmarks/oracle_report.py [--concepts triangle,striped] [--seeds 4]

Writes benchmarks/results/oracle_report.{json,md}; oracles not trained yet are listed as such.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.loading import load_pipeline  # noqa: E402
from studio.toyworld.judge import ToyJudge  # noqa: E402
from studio.toyworld.oracle import format_summary, oracle_info, oracle_path, oracle_summary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default="triangle,striped")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--keep", action="store_true", help="keep the rows in oracle_report.json whose oracle (oracle.json) and sampler are unchanged; measure the rest")
    args = ap.parse_args()
    report = RESULTS / "oracle_report.json"
    saved = json.loads(report.read_text()) if args.keep and report.is_file() else {}
    kw = dict(seeds=args.seeds, prompts=args.prompts, steps=args.steps)
    judge, original = None, None
    rows = {}
    for name in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        path = oracle_path(name)
        info = oracle_info(path) if path.is_dir() else None
        old = saved.get(name, {})
        if info is not None and old.get("oracle") and old.get("sampler") == kw and old.get("oracle_info") == info:
            rows[name] = old  # the same oracle under the same sampler: nothing to redo
            continue
        if judge is None:
            judge, original = ToyJudge.load(), load_pipeline("toy", device="cpu")
        t0 = time.time()
        rows[name] = {"shipped": oracle_summary(original, judge, name, **kw), "sampler": kw, "oracle": None}
        if info is not None:
            rows[name]["oracle"] = oracle_summary(load_pipeline(path, device="cpu"), judge, name, **kw)
            rows[name]["oracle_info"] = info
        rows[name]["seconds"] = time.time() - t0
    lines = []
    for name, row in rows.items():
        lines.append("- " + format_summary(row["shipped"], "shipped model"))
        if row["oracle"] is None:
            lines.append(f"- oracle without {name}: not trained yet (`studio toyworld train --without {name} --install`)")
        else:
            lines.append("- " + format_summary(row["oracle"], f"oracle without {name}"))
    head = f"Sampler: DDIM {args.steps} steps, guidance 7.5, {args.seeds} seeds x {args.prompts} direct prompts of the concept; the other concepts of its attribute on half as many prompts each. One seed set: a single run."
    text = "# Toy oracles\n\n" + head + "\n\n" + "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "oracle_report.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "oracle_report.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
