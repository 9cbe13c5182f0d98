"""benchmarks/attack_matrix.py without running an attack: the cells it plans from the registries, a killed run
that resumes without redoing finished cells, the cost estimate, and the table's intervals and differences."""

import json

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
