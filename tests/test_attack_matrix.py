"""benchmarks/attack_matrix.py without running an attack: the cells it plans from the registries, a killed run
that resumes without redoing finished cells, the cost estimate, and the table's intervals and differences."""

import json

import numpy as np
import pytest
from conftest import load_benchmark

from studio.stats import Rate, format_rate

M = load_benchmark("attack_matrix")
# a fake cell: rate k/n fixed per (eraser, attack), cost stated
RATES = {("original", "none"): (20, 20), ("original", "random"): (20, 20), ("uce", "none"): (0, 20), ("uce", "random"): (3, 20)}


def fake_result(cell):
    k, n = RATES[(cell.eraser, cell.attack)]
    k = min(n, k + cell.seed) if cell.eraser == "esd-x" else k
    rate = Rate(k, cell.pairs if cell.pairs != n else n)
    return {"rate": rate.as_dict(), "rate_text": str(rate), "unet_evals": 100, "seconds": 2.0, "erase_seconds": 5.0, "erase_unet_evals": 50}


def test_cells_come_from_the_registries_with_headline_cells_over_erasure_seeds():
    cells = M.plan_cells(["original", "esd-x", "uce"], ["none", "cce"], ["triangle"], pairs=10, headline_pairs=50, erasure_seeds=3)
    keys = [c.key for c in cells]
    # esd-x has a seed: 3 erasures for the headline attack (cce), the other attack once; uce is closed-form, the original unerased
    assert [k for k in keys if k.startswith("esd-x")] == [
        "esd-x--triangle--none--s0--p10",
        "esd-x--triangle--cce--s0--p50",
        "esd-x--triangle--cce--s1--p50",
        "esd-x--triangle--cce--s2--p50",
    ]
    assert [k for k in keys if k.startswith("uce")] == ["uce--triangle--none--s0--p10", "uce--triangle--cce--s0--p50"]
    assert len(keys) == len(set(keys)) == 8
    with pytest.raises(SystemExit, match="unknown attack 'nope'"):
        M.main(["--attacks", "none,nope", "--plan"])
    with pytest.raises(SystemExit, match="unknown eraser"):
        M.main(["--erasers", "esd-z", "--plan"])


def test_a_killed_run_resumes_without_redoing_finished_cells(tmp_path):
    cells = M.plan_cells(["original", "uce"], ["none", "random"], ["triangle"], pairs=20, headline_pairs=50, erasure_seeds=3)
    assert len(cells) == 4
    calls = []

    def killed_at_third(cell):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed inside the third cell
        calls.append(cell.key)
        return fake_result(cell)

    with pytest.raises(KeyboardInterrupt):
        M.run_matrix(cells, killed_at_third, tmp_path, log=lambda *_: None)
    done = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert done == sorted(f"{c.key}.json" for c in cells[:2])  # the finished cells, whole, and no partial file
    first = json.loads((tmp_path / "cells" / done[0]).read_text())

    est = M.estimate(cells, tmp_path)
    assert (est["done"], est["left"]) == (2, 2) and est["left_cells"] == [c.key for c in cells[2:]]
    budget = {a: M.attack_estimate(a, 20) for a in ("none", "random")}
    assert est["unet_evals_left"] == sum(budget[c.attack] for c in cells[2:]) > 0
    assert est["seconds_per_unet_eval"] == pytest.approx(2.0 / 100)  # measured on the done cells

    again = []
    results = M.run_matrix(cells, lambda cell: again.append(cell.key) or fake_result(cell), tmp_path, log=lambda *_: None)
    assert again == [c.key for c in cells[2:]]  # only the cells left
    assert [r["key"] for r in results] == [c.key for c in cells]
    assert json.loads((tmp_path / "cells" / done[0]).read_text()) == first  # finished cells untouched
    assert M.estimate(cells, tmp_path)["left"] == 0


def test_the_table_gives_intervals_seed_spread_and_which_differences_are_real(tmp_path):
    RATES.update({("esd-x", "none"): (4, 20), ("esd-x", "random"): (5, 20)})
    cells = M.plan_cells(["original", "esd-x", "uce"], ["none", "random"], ["triangle"], 20, 20, 3, headline=("random",))
    results = M.run_matrix(cells, fake_result, tmp_path, log=lambda *_: None)
    text, summary = M.table(results)
    assert format_rate(20, 20) in text and format_rate(0, 20) in text
    # esd-x under the headline attack over erasure seeds 0, 1, 2: 5, 6, 7 of 20 pooled
    assert f"{format_rate(18, 60)}; 3 erasure seeds: mean 30%, spread 25%-35%" in text
    assert summary["concepts"]["triangle"]["esd-x"]["random"]["k"] == 18
    line = next(x for x in text.splitlines() if x.startswith("- no attack, between erasers"))
    assert "original vs esd-x" in line and "original vs uce" in line and "esd-x vs uce" not in line.split("overlap")[0]
    assert "uce, between attacks: No two rows differ" in text  # 0/20 vs 3/20


class StubStrict:
    """A strict judge whose verdicts are given in order, and which keeps the images it was shown."""

    def __init__(self, verdicts=None):
        self.given, self.seen = list(verdicts or []), []

    def verdicts(self, images, concept):
        self.seen.append([np.asarray(im) for im in images])
        return np.array(self.given[: len(images)] if self.given else [0] * len(images), dtype=np.int8)

    def shows(self, images, concept):
        return self.verdicts(images, concept) == 1


def test_the_strict_judge_counts_abstentions_apart_and_the_table_shows_them(tmp_path):
    entry = {"per_pair": [{"success": s} for s in (True, True, False, False)]}
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    out = M.strict_entry(StubStrict([1, -1, 0]), [image, image, image, None], entry, "triangle")
    assert out["verdicts"] == [1, -1, 0, 0]  # None: the text never fit in 77 tokens, a failure as in the cell
    assert M.as_rate(out["rate"]) == Rate(1, 3, 1)

    RATES.update({("esd-x", "none"): (4, 20)})
    cells = M.plan_cells(["original", "esd-x"], ["none"], ["triangle"], 20, 20, 1)
    strict = {"original": Rate(18, 19, 1), "esd-x": Rate(2, 14, 6)}

    def with_strict(cell):
        return {**fake_result(cell), "strict": {"rate": strict[cell.eraser].as_dict()}}

    results = M.run_matrix(cells, with_strict, tmp_path, log=lambda *_: None)
    text, summary = M.table(results)
    assert f"| esd-x | {Rate(2, 14, 6)} |" in text  # "14% (2/14) [4, 40], 6 abstained"
    assert summary["concepts"]["triangle"]["esd-x"]["none"]["strict"]["abstained"] == 6
    assert summary["abstained"] == {"pairs": 40, "abstained": 7}
    del results[1]["strict"]  # a cell not judged strictly: its strict cell is '-', its plain rate unchanged
    text, _ = M.table(results)
    assert "| esd-x | - |" in text and format_rate(4, 20) in text


@pytest.mark.parametrize("attack", ["random", "soft-prompt"])
def test_rejudge_makes_each_deciding_image_again(tmp_path, attack, monkeypatch):
    # a real cell on the toy model (an attack on the original with a judge that never says yes, so every pair is
    # decided by its last adversarial image: random tokens' text, the soft prompt's learned prefix), judged
    # strictly, then judged again from the cell
    toy_config = M.matrix_config
    if attack == "random":  # 2 draws, not the toy budget's 10: the replay is the same, in a fifth of the time
        from dataclasses import replace

        monkeypatch.setattr(M, "matrix_config", lambda name, steps=M.STEPS: replace(toy_config(name, steps), draws=2))
    models = M.Models()
    never = StubStrict()
    models.judge = models.strict = never
    cell = M.Cell("original", "triangle", attack, 0, 2)
    result = M.run_matrix([cell], M.make_cell_fn(models, steps=3, folder=tmp_path), tmp_path, log=lambda *_: None)[0]
    deciding = never.seen[-1]
    assert [p["adversarial_prompt"] != p["prompt"] for p in result["per_pair"]] == [True, True]
    assert M.as_rate(result["strict"]["rate"]) == Rate(0, 2)

    path = M.cell_path(cell, tmp_path)
    stripped = {k: v for k, v in result.items() if k != "strict"}
    path.write_text(json.dumps(stripped))
    again = StubStrict()
    assert M.rejudge([cell], log=lambda *_: None, folder=tmp_path, judge=again, strict=again) == 1
    replayed = again.seen[0]
    assert len(replayed) == len(deciding) == 2
    # the same images, made again from the cell (to 8-bit rounding: the cell made them one at a time, the replay in a batch)
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(replayed, deciding)) <= 2
    judged = json.loads(path.read_text())["strict"]
    assert M.as_rate(judged["replay_agreement"]) == Rate(2, 2)
    assert M.rejudge([cell], log=lambda *_: None, folder=tmp_path, judge=again, strict=again) == 0  # nothing left to judge
