"""Distance to the oracle (probes/distance.py): the same prompts and seeds on every model, judged
distributions, KID on judge features with its error, budget, progress, cancel; the probe report, the
CLI; the toy-world report's oracle lines."""

import threading

import numpy as np
import pytest

import probes
from probes.common import BudgetExceeded
from probes.distance import DistanceConfig, draw, kid_with_error, total_variation
from studio.progress import is_event
from studio.sampling import Cancelled


def tiny(**kw) -> DistanceConfig:
    return DistanceConfig(**{"prompts": 2, "retain_prompts": 1, "seeds": 2, "num_inference_steps": 2, "halves": 5, **kw})


def test_kid_with_error_is_zero_for_the_same_features_and_large_for_shifted_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(80, 16))
    same = kid_with_error(a, a.copy())
    assert same["kid_x1000"] == pytest.approx(0.0, abs=1e-9) and same["pairs"] == 80
    near = kid_with_error(a, rng.normal(size=(80, 16)))  # the same distribution: within a few errors of 0
    far = kid_with_error(a, rng.normal(size=(80, 16)) + 1.5)
    assert abs(near["kid_x1000"]) < 4 * near["se_x1000"] + 1e-6
    assert far["kid_x1000"] > 4 * far["se_x1000"] > 0
    with pytest.raises(ValueError, match="different prompt sets"):
        kid_with_error(a, a[:40])


def test_closer_needs_a_difference_beyond_the_errors():
    from probes.distance import closer

    assert closer({"kid_x1000": 1.0, "se_x1000": 1.0}, {"kid_x1000": 9.0, "se_x1000": 1.0}) == "oracle"
    assert closer({"kid_x1000": 9.0, "se_x1000": 1.0}, {"kid_x1000": 1.0, "se_x1000": 1.0}) == "original"
    assert closer({"kid_x1000": 1.0, "se_x1000": 3.0}, {"kid_x1000": 9.0, "se_x1000": 3.0}) == "undecided"


def test_total_variation():
    a = {"circle": {"rate": 0.5}, "star": {"rate": 0.5}}
    assert total_variation(a, a) == 0.0
    assert total_variation(a, {"triangle": {"rate": 1.0}}) == 1.0
    assert total_variation(a, {"circle": {"rate": 1.0}}) == pytest.approx(0.5)


def test_a_model_beside_itself_is_at_distance_zero_and_a_drawn_reference_counts_as_sampled(tiny_pipe, judge):
    from conftest import build_tiny_pipe

    cfg = tiny()
    events = []
    other = build_tiny_pipe(seed=1)
    result = probes.run_probe(
        "distance", tiny_pipe, "triangle", cfg, judge=judge, callback=events.append, references={"original": tiny_pipe, "oracle": other}
    )
    m = result.measurements
    assert list(m["models"]) == ["erased", "original", "oracle"] and m["attribute"] == "shape"
    n_concept, n_retain = 2 * 2, 4 * 1 * 2  # prompts x seeds; 4 other shapes x retain_prompts x seeds
    for v in m["models"].values():
        assert sum(r["k"] for r in v["drawn"].values()) == n_concept and all(r["n"] == n_concept for r in v["drawn"].values())
        assert v["retained"]["n"] == n_retain
    same = m["pairs"]["erased~original"]
    assert same["concept"]["kid_x1000"] == pytest.approx(0.0, abs=1e-9) and same["concept"]["tv"] == 0.0
    assert same["retain"]["kid_x1000"] == pytest.approx(0.0, abs=1e-9)
    assert m["pairs"]["erased~oracle"]["concept"]["kid_x1000"] != pytest.approx(0.0, abs=1e-6)  # another random model draws other images
    assert result.summary["concept_kid_x1000"]["original"] == pytest.approx(0.0, abs=1e-9)
    assert result.stats["unet_evals"] == cfg.planned_unet_evals("triangle", 3) == 3 * (n_concept + n_retain) * 2 * 2
    assert events and all(is_event(e) for e in events) and {e["stage"] for e in events} == {"distance"}
    assert {e["model"] for e in events} == {"erased", "original", "oracle"} and events[-1]["step"] == events[-1]["total"]
    assert result.grid() is not None
    text = probes.format_result(result)
    assert "erased to oracle: concept KID x1000" in text and f"/{n_concept})" in text

    # the same reference, drawn once beforehand: the same numbers, and it is not sampled (nor counted) again
    before = draw(other, "triangle", cfg, judge, label="oracle")
    again = probes.run_probe("distance", tiny_pipe, "triangle", cfg, judge=judge, references={"original": tiny_pipe, "oracle": before})
    assert again.measurements["pairs"]["erased~oracle"] == m["pairs"]["erased~oracle"]
    assert again.stats["unet_evals"] == cfg.planned_unet_evals("triangle", 2)


def test_budget_cancel_and_bad_inputs(tiny_pipe, judge):
    cfg = tiny(max_unet_evals=10)
    with pytest.raises(BudgetExceeded, match="max_unet_evals=10"):
        probes.run_probe("distance", tiny_pipe, "triangle", cfg, judge=judge)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        probes.run_probe("distance", tiny_pipe, "triangle", tiny(), judge=judge, cancel=stop)
    with pytest.raises(ValueError, match="at least 4 images"):
        DistanceConfig(prompts=1, seeds=2)
    with pytest.raises(ValueError, match="prompts must be a whole number"):
        probes.get_config("distance", {"prompts": 0})
    with pytest.raises(ValueError, match="background"):
        probes.run_probe("distance", tiny_pipe, "dark", tiny(), judge=judge)
    drawn = draw(tiny_pipe, "triangle", tiny(), judge, label="oracle")
    with pytest.raises(ValueError, match="different settings"):
        probes.run_probe("distance", tiny_pipe, "triangle", tiny(seeds=3), judge=judge, references={"oracle": drawn})
    with pytest.raises(ValueError, match="another label"):
        probes.run_probe("distance", tiny_pipe, "triangle", tiny(), judge=judge, references={"erased": drawn})


def test_the_toy_oracle_draws_other_shapes_where_the_original_draws_triangles(toy_pipe, judge):
    from studio.loading import load_pipeline
    from studio.toyworld.oracle import oracle_path

    if not (oracle_path("triangle") / "oracle.json").is_file():
        pytest.skip("the triangle oracle is not shipped")
    oracle = load_pipeline(oracle_path("triangle"), device="cpu")
    cfg = DistanceConfig(prompts=4, retain_prompts=1, seeds=2, num_inference_steps=20)
    result = probes.run_probe("distance", toy_pipe, "triangle", cfg, judge=judge, label="original", references={"oracle": oracle})
    m = result.measurements
    assert m["models"]["original"]["shown"]["k"] >= 7  # of 8: the original draws triangles
    assert m["models"]["oracle"]["shown"]["k"] <= 1  # the oracle never saw one (0/80 at 50 steps in its report)
    assert m["pairs"]["original~oracle"]["concept"]["tv"] >= 0.75
    assert m["models"]["oracle"]["retained"]["k"] >= 7  # of 8 images of the other shapes, as asked


def test_cli_distance_writes_the_report_table(tmp_path, monkeypatch, capsys, tiny_pipe):
    """`studio probe --probes distance` on the original with an oracle folder: one result on the first model, the table in report.md."""
    import json

    from conftest import build_tiny_pipe

    from studio import loading

    oracle = tmp_path / "oracle"
    oracle.mkdir()
    (oracle / "oracle.json").write_text(json.dumps({"kind": "oracle", "without": "triangle"}))
    pipes = {"toy": tiny_pipe, str(oracle): build_tiny_pipe(seed=1)}
    monkeypatch.setattr(loading, "load_pipeline", lambda path, device=None: pipes[str(path)])
    from studio.cli import main

    out = tmp_path / "out"
    argv = ["probe", "--erased", "toy", "--concept", "triangle", "--probes", "distance", "--oracle", str(oracle), "--out", str(out)]
    argv += [
        "--set",
        "distance.prompts=2",
        "--set",
        "distance.retain_prompts=1",
        "--set",
        "distance.seeds=2",
        "--set",
        "distance.num_inference_steps=2",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]["original"]["results"]) == ["distance"] and report["models"]["oracle"]["results"] == {}
    res = report["models"]["original"]["results"]["distance"]
    assert set(res["measurements"]["models"]) == {"original", "oracle"}
    assert res["stats"]["unet_evals"] == probes.get_config(
        "distance", {"prompts": 2, "retain_prompts": 1, "seeds": 2, "num_inference_steps": 2}
    ).planned_unet_evals("triangle", 2)
    md = (out / "report.md").read_text()
    assert "## distance" in md and "concept KID x1000 to oracle" in md and "| oracle |" in md
    assert "(the sampling of every model: original, oracle)" in md
    assert (out / "grids" / "original-distance.png").is_file()


# ---------------------------------------------------------------- the toy-world report's oracle lines


def test_shipped_oracles_are_the_folders_with_an_oracle_json(tmp_path):
    import json

    from studio.toyworld.report import shipped_oracles

    (tmp_path / "toy-oracle-triangle").mkdir()
    (tmp_path / "toy-oracle-triangle" / "oracle.json").write_text(json.dumps({"kind": "oracle", "without": "triangle"}))
    (tmp_path / "toy-oracle-striped").mkdir()  # still training: no oracle.json yet
    (tmp_path / "toy-model").mkdir()
    assert shipped_oracles(tmp_path) == {"triangle": tmp_path / "toy-oracle-triangle"}


def test_the_toyworld_report_has_a_line_per_shipped_oracle(judge):
    from studio.toyworld.grammar import ATTRIBUTES
    from studio.toyworld.report import format_report, oracle_lines, shipped_oracles

    if "triangle" not in shipped_oracles():
        pytest.skip("the triangle oracle is not shipped")
    lines = oracle_lines(judge, device="cpu", seeds=1, prompts=4, steps=20)
    assert list(lines) == list(shipped_oracles())
    tri = lines["triangle"]
    assert tri["pairs"] == 4 and sum(tri["drawn"].values()) == 4 and tri["shown"]["k"] <= 1  # it never saw a triangle
    assert tri["retained"]["n"] == 4 * 4 and tri["retained"]["k"] >= 12  # the other shapes, as asked
    full = {a: 1.0 for a in ATTRIBUTES}
    r = {
        "judge_accuracy": full,
        "direct": full,
        "synonym": full,
        "alias": full,
        "settings": {"seeds": 1, "steps": 20, "guidance": 7.5, "sampler": "DDIM"},
        "passes": {"judge": True},
        "oracles": lines,
    }
    text = format_report(r)
    assert "- oracle without triangle: 'triangle' prompts show it" in text and "other shapes as asked" in text
    assert "Oracles" not in format_report({**r, "oracles": {}})
