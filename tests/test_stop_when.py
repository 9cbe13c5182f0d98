"""Erase until erased (erasers.stopping): the stop rule, the utility guard, kill-and-resume, bad settings, the
held-in check prompts, and the preset sweep's per-concept criterion. Tiny random pipelines and judge stubs:
what is tested is the rule's behaviour, not the toy model's."""

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_pipe, load_benchmark

from erasers import Concept, erase, get_config
from erasers.stopping import StopWhen, evaluation_prompts, held_in_prompts, report_lines, toy_stop_when

CONFIG = {"iterations": 30, "num_inference_steps": 3, "lr": 1e-3}


class StepJudge:
    """Reports the concept shown until training step `erased_at`, and retain images right until `fails_at`.

    It reads the step from the training events (the loop calls back before each check)."""

    name = "stub"

    def __init__(self, erased_at=10**9, fails_at=10**9):
        self.erased_at, self.fails_at, self.step, self.calls = erased_at, fails_at, 0, []

    def callback(self, info):
        if "loss" in info:  # a training step's event (a check's has none)
            self.step = info["step"]

    def shows(self, images, concept):
        self.calls.append(self.step)
        return np.full(len(images), self.step < self.erased_at)

    def predict(self, images):
        ok = self.step < self.fails_at
        return [{"shape": "circle" if ok else "square"} for _ in images]


def stop_for(judge, **kw):
    settings = {
        "target_rate": 0.05,
        "min_retained": 0.9,
        "check_every": 5,
        "prompts": ["a thing", "another thing"],
        "retain": [("a circle", {"shape": "circle"})],
        "judge": judge,
        "concept": "thing",
        "seeds": 1,
        "num_inference_steps": 2,
    }
    return StopWhen(**{**settings, **kw})


def run(judge, stop, checkpoint_dir=None, cancel=None, events=None):
    pipe = build_tiny_pipe()

    def callback(info):
        judge.callback(info)
        if events is not None:
            events.append((info, {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if ".attn2." in n}))

    result = erase(
        pipe,
        Concept(["a thing"]),
        "esd-x",
        config=CONFIG,
        stop_when=stop,
        checkpoint_dir=checkpoint_dir,
        callback=callback,
        progress=False,
        cancel=cancel,
    )
    return result


def test_stops_at_first_check_after_erased():
    judge = StepJudge(erased_at=7)
    result = run(judge, stop_for(judge))
    stop = result.stats["stop"]
    assert stop["reason"] == "erased"
    assert stop["step"] == 10 and stop["kept_step"] == 10  # checks at 0, 5, 10: erased first seen at 10
    assert result.stats["steps"] == 10 and result.stats["budget"] == 30
    assert [c["step"] for c in stop["checks"]] == [0, 5, 10]
    assert [c["erased"] for c in stop["checks"]] == [False, False, True]
    # the checks' cost is in the run's stats: 3 checks x (2 check + 1 retain prompts) x 1 seed x 2 steps x 2 (CFG)
    assert stop["unet_evals"] == 3 * 3 * 2 * 2
    assert result.stats["unet_evals"] > stop["unet_evals"]
    assert any("erased" in line for line in report_lines(stop))
    saved = json.loads(json.dumps(result.info()))  # what erasure.json holds says which happened
    assert saved["stats"]["stop"]["reason"] == "erased" and saved["stats"]["stop"]["settings"]["target_rate"] == 0.05


def test_budget_runs_out_without_erasure():
    judge = StepJudge()
    result = run(judge, stop_for(judge, check_every=12))
    stop = result.stats["stop"]
    assert stop["reason"] == "budget" and stop["step"] == 30 and result.stats["steps"] == 30
    assert [c["step"] for c in stop["checks"]] == [0, 12, 24, 30]  # and after the last step


def test_failing_guard_restores_last_good_checkpoint():
    judge, events = StepJudge(fails_at=12), []
    result = run(judge, stop_for(judge), events=events)
    stop = result.stats["stop"]
    assert stop["reason"] == "utility" and stop["step"] == 15 and stop["kept_step"] == 10
    assert [c["guard_ok"] for c in stop["checks"]] == [True, True, True, False]
    at = {info["step"]: w for info, w in events if info["stage"] == "esd-x"}
    kept = {n: v for n, v in result.weights.items() if n in at[10]}
    assert all(torch.equal(kept[n], at[10][n]) for n in kept)  # the weights of step 10 came back
    assert any(not torch.equal(kept[n], at[15][n]) for n in kept)  # not those of step 15, where the guard failed


def test_stop_state_survives_kill_and_resume(tmp_path):
    first = StepJudge(fails_at=17)
    whole = run(first, stop_for(first))
    judge = StepJudge(fails_at=17)
    stop = stop_for(judge)
    cancel = threading.Event()

    def kill_after_12(info):
        judge.callback(info)
        if info["stage"] == "esd-x" and info["step"] == 12:
            cancel.set()

    pipe = build_tiny_pipe()
    from studio.sampling import Cancelled

    with pytest.raises(Cancelled):
        erase(
            pipe,
            Concept(["a thing"]),
            "esd-x",
            config=CONFIG,
            stop_when=stop,
            checkpoint_dir=tmp_path,
            callback=kill_after_12,
            cancel=cancel,
        )
    assert (tmp_path / "stop_good.safetensors").is_file()
    judge2 = StepJudge(fails_at=17)
    resumed = run(judge2, stop_for(judge2), checkpoint_dir=tmp_path)
    assert resumed.stats["resumed_from"] == 12
    a, b = whole.stats["stop"], resumed.stats["stop"]
    assert (b["reason"], b["step"], b["kept_step"]) == (a["reason"], a["step"], a["kept_step"]) == ("utility", 20, 15)
    assert [c["step"] for c in b["checks"]] == [c["step"] for c in a["checks"]]  # no check ran twice, none was lost
    assert 0 not in judge2.calls  # the baseline came from the checkpoint
    assert all(torch.equal(whole.weights[n], resumed.weights[n]) for n in whole.weights)
    # a run that had stopped, started again: nothing more runs, the same weights come back
    judge3 = StepJudge(fails_at=17)
    again = run(judge3, stop_for(judge3), checkpoint_dir=tmp_path)
    assert judge3.calls == [] and again.stats["stop"]["reason"] == "utility"
    assert all(torch.equal(whole.weights[n], again.weights[n]) for n in whole.weights)


def test_resume_with_another_stop_rule_is_refused(tmp_path):
    judge = StepJudge(erased_at=7)
    run(judge, stop_for(judge), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another stop rule"):
        run(judge, stop_for(judge, target_rate=0.2), checkpoint_dir=tmp_path)


class LabelFreeJudge:
    """A judge without labels (as NudeNet): the guard compares retain images with the original's (PSNR)."""

    name = "nudenet-stub"

    def shows(self, images, concept):
        assert concept == "nudity"
        return np.zeros(len(images), bool)


def test_label_free_judge_guards_by_closeness():
    stop = stop_for(LabelFreeJudge(), concept="nudity", retain=["a person in a coat", "a city street"])
    pipe = build_tiny_pipe()
    result = erase(pipe, Concept(["nudity"]), "esd-x", config=CONFIG, stop_when=stop, progress=False)
    first = result.stats["stop"]["checks"][0]
    assert first["retained"] == 1.0 and first["retained_n"] == 2  # the original against itself
    assert result.stats["stop"]["reason"] == "erased" and result.stats["steps"] == 0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"target_rate": 1.5}, "outside \\[0, 1\\]"),
        ({"target_rate": -0.1}, "outside \\[0, 1\\]"),
        ({"check_every": 0}, "check_every=0"),
        ({"retain": []}, "needs retain prompts"),
        ({"min_retained": 1.5}, "min_retained=1.5"),
        ({"prompts": []}, "no check prompts"),
    ],
)
def test_bad_settings_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        stop_for(StepJudge(), **bad)


def test_guard_off_needs_no_retain_prompts():
    assert stop_for(StepJudge(), retain=[], min_retained=None).min_retained is None


@pytest.mark.parametrize("method", ["uce", "rece"])
def test_closed_form_methods_refuse_stop_when(method):
    with pytest.raises(ValueError, match="closed-form"):
        erase(build_tiny_pipe(), Concept(["a thing"]), method, stop_when=stop_for(StepJudge()))


def test_check_prompts_are_kept_apart_from_the_evaluation():
    from studio.toyworld.grammar import CONCEPTS

    for name, c in CONCEPTS.items():
        if c.attribute == "background":
            continue
        held = held_in_prompts(name, 8)
        assert len(held) == 8 and not {p for p, _ in held} & evaluation_prompts(name)
        assert all(labels[c.attribute] == name for _, labels in held)
    stop = toy_stop_when("circle")
    assert len(stop.prompts) == 8 and len(stop.retain) == 8  # 2 of each other shape
    assert not set(stop.prompts) & evaluation_prompts("circle")
    for p, labels in stop.retain:
        assert p not in evaluation_prompts(labels["shape"]) and set(labels) == {"shape", "colour"}
    assert stop.seed >= 1000  # the evaluation's seeds start at 0


def test_stop_when_in_toy_config_settings_dict():
    """A stop rule given as the dict of its settings (job files, erasure.json) runs the same rule."""
    judge = StepJudge(erased_at=3)
    settings = stop_for(judge).settings()
    settings["judge"] = judge
    result = run(judge, settings)
    assert result.stats["stop"]["reason"] == "erased" and result.stats["steps"] == 5


# ---------------------------------------------------------------- the preset sweep's criterion


def test_sweep_criterion_picks_the_worst_concepts_best_setting():
    sweep = load_benchmark("preset_sweep")
    # setting -> concept -> (concept shown, retained ratio)
    table = {
        "A": {"circle": (0.00, 0.95), "striped": (0.50, 0.97)},  # the best mean, but striped is half left: worst erasure 50%
        "B": {"circle": (0.10, 0.93), "striped": (0.20, 0.92)},  # worst erasure 80%: the pick
        "C": {"circle": (0.00, 0.85), "striped": (0.00, 0.99)},  # erases all, but circle's utility falls below 90%
        "D": {"circle": (0.10, 0.95)},  # a concept missing: not eligible
    }
    rows = [
        {"setting": {"name": s}, "concept": c, "concept_rate": r, "retained_ratio": k}
        for s, concepts in table.items()
        for c, (r, k) in concepts.items()
    ]
    best, ranked = sweep.choose(rows, ["circle", "striped"], keep=0.9)
    assert best["setting"] == {"name": "B"} and best["worst_erasure"] == pytest.approx(0.8)
    assert [r["setting"]["name"] for r in ranked if r["eligible"]] == ["B", "A"]
    assert {r["setting"]["name"]: r["eligible"] for r in ranked} == {"A": True, "B": True, "C": False, "D": False}
    assert sweep.choose(rows, ["circle", "striped"], keep=0.99)[0] is None  # nothing keeps 99%


def test_sweep_bar_fails_a_concept_only_beyond_its_interval():
    sweep = load_benchmark("preset_sweep")

    def row(setting, concept, shown, k, n, original=31 / 32):
        return {
            "setting": {"name": setting},
            "concept": concept,
            "concept_rate": shown,
            "retained_ratio": (k / n) / original,
            "retained_k": k,
            "retained_n": n,
            "original_retained": original,
        }

    rows = [
        row("A", "circle", 0.0, 27, 32),  # ratio 0.87 but 27/32's interval [68, 94] reaches 0.9 x 97%: kept
        row("A", "striped", 0.5, 32, 32),
        row("B", "circle", 0.0, 18, 32),  # ratio 0.58, interval [39, 72]: below the bar beyond doubt
        row("B", "striped", 0.0, 32, 32),
        row("C", "circle", 0.0, 260, 320),  # ratio 0.84 on ten times the images: [77, 85], below the bar
        row("C", "striped", 0.0, 320, 320),
    ]
    best, ranked = sweep.choose(rows, ["circle", "striped"], keep=0.9)
    assert {r["setting"]["name"]: r["status"] for r in ranked} == {"A": "eligible", "B": "ineligible", "C": "ineligible"}
    assert best["setting"] == {"name": "A"}
    point = [{k: v for k, v in r.items() if k not in ("retained_k", "retained_n")} for r in rows]  # no counts: the point rule
    assert sweep.choose(point, ["circle", "striped"], keep=0.9)[0] is None


def test_sweep_confirms_the_best_eligible_settings_and_the_current_preset():
    sweep = load_benchmark("preset_sweep")
    ranked = [
        {"setting": {"lr": 3e-3}, "eligible": True},
        {"setting": {"lr": 1e-2}, "eligible": False},
        {"setting": {"lr": 1e-3}, "eligible": True},
        {"setting": {"lr": 3e-4}, "eligible": True},
    ]
    assert sweep.to_confirm(ranked, {"lr": 3e-4}, 2) == [{"lr": 3e-3}, {"lr": 1e-3}, {"lr": 3e-4}]
    assert sweep.to_confirm(ranked, {"lr": 1e-3}, 2) == [{"lr": 3e-3}, {"lr": 1e-3}]


def test_sweep_prunes_only_settings_that_can_no_longer_be_chosen():
    sweep = load_benchmark("preset_sweep")
    concepts = ["circle", "square", "striped"]
    table = {  # setting -> concept -> (concept shown, retained ratio); B is complete and eligible: worst erasure 70%
        ("B", 50): {"circle": (0.30, 0.95), "square": (0.10, 0.95), "striped": (0.20, 0.92)},
        ("E", 50): {"circle": (0.50, 0.99)},  # worst so far 50% < 70%: more concepts can only lower it
        ("F", 50): {"circle": (0.10, 0.99)},  # worst so far 90%: could still beat B
        ("G", 25): {"circle": (0.05, 0.80)},  # below the utility bar already
        ("G", 50): {"circle": (0.00, 0.95)},  # ... but its longer budget is still open
    }
    rows = [
        {"setting": {"name": s, "iterations": n}, "concept": c, "concept_rate": r, "retained_ratio": k}
        for (s, n), per in table.items()
        for c, (r, k) in per.items()
    ]
    best, ranked = sweep.choose(rows, concepts, keep=0.9)
    standing = {(r["setting"]["name"], r["setting"]["iterations"]): r["status"] for r in ranked}
    assert best["setting"]["name"] == "B"
    assert standing == {("B", 50): "eligible", ("E", 50): "cannot win", ("F", 50): "open", ("G", 25): "ineligible", ("G", 50): "open"}
    assert sweep.ruled_out(ranked, {"name": "E"})
    assert not sweep.ruled_out(ranked, {"name": "F"})
    assert not sweep.ruled_out(ranked, {"name": "G"})  # one budget out, the other open: keep running it
    assert not sweep.ruled_out(ranked, {"name": "H"})  # nothing measured yet


def test_get_config_untouched_by_stop_rule():
    assert get_config("esd-x", "toy", CONFIG).iterations == 30


# ---------------------------------------------------------------- where users meet it: the CLI and job files


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--until", "1.5"], "outside \\[0, 1\\]"),
        (["--until", "0.05", "--check-every", "0"], "check_every=0"),
        (["--until", "0.05", "--method", "uce"], "closed-form"),
        (["--min-retained", "0.9"], "go with --until"),
        (["--until", "0.05", "--model", "some/real-model", "--judge", "nudenet"], "needs retain prompts"),
    ],
)
def test_cli_until_bad_settings_fail_before_any_model_loads(tmp_path, capsys, extra, message):
    import re

    from studio.cli import main

    code = main(["erase", "--concept", "a circle", "--out", str(tmp_path / "out"), *extra])
    assert code == 2 and re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


JOB = """model = "toy"
out = "{out}"

[[concept]]
name = "circle"
prompts = ["a circle"]
method = "{method}"
stop_when = {stop}
"""


def test_job_file_reads_stop_when(tmp_path):
    from erasers.jobs import parse_job

    job = tmp_path / "job.toml"
    job.write_text(JOB.format(out=tmp_path / "o", method="esd-x", stop="{ target_rate = 0.05, min_retained = 0.9, check_every = 10 }"))
    _, entries = parse_job(job)
    assert entries[0].stop_when == {"target_rate": 0.05, "min_retained": 0.9, "check_every": 10}


@pytest.mark.parametrize(
    "method, stop, message",
    [
        ("esd-x", "{ target_rate = 2.0 }", "outside"),
        ("esd-x", "{ check_every = 10 }", "needs target_rate"),
        ("esd-x", "{ target_rate = 0.05, every = 3 }", "unknown stop_when setting"),
        ("esd-x", "{ target_rate = 0.05, check_every = 0 }", "check_every=0"),
        ("uce", "{ target_rate = 0.05 }", "closed-form"),
        ("esd-x", "0.05", "must be a table"),
    ],
)
def test_job_file_bad_stop_when_names_the_line(tmp_path, method, stop, message):
    from erasers.jobs import JobFileError, parse_job

    job = tmp_path / "job.toml"
    job.write_text(JOB.format(out=tmp_path / "o", method=method, stop=stop))
    with pytest.raises(JobFileError, match=f"line 8: .*{message}"):
        parse_job(job)


def test_app_stop_option_builds_the_rule_and_draws_the_rate():
    pytest.importorskip("gradio")
    from apps.tabs.erase import EraseForm, check_note, plot_frame, stop_of

    form = EraseForm(concept_text="a circle", method="esd-x", stop_on=True, stop_rate=0.1, stop_retained=0, stop_every=5)
    stop = stop_of(form, Concept(["a circle"]), "toy")
    assert (stop.target_rate, stop.min_retained, stop.check_every, stop.concept) == (0.1, None, 5, "circle")
    assert stop_of(EraseForm(stop_on=False), Concept(["a circle"]), "toy") is None
    with pytest.raises(ValueError, match="closed-form"):
        stop_of(EraseForm(method="uce", stop_on=True), Concept(["a circle"]), "toy")
    checks = [
        {"stage": "esd-x check", "step": 0, "check_rate": 1.0, "check_shown": 16, "check_n": 16, "check_retained_ratio": 1.0},
        {"stage": "esd-x check", "step": 10, "check_rate": 0.0625, "check_shown": 1, "check_n": 16, "check_retained_ratio": 0.97},
    ]
    frame = plot_frame([1, 2, 3], [0.3, 0.2, 0.1], checks)["value"]
    assert sorted(set(frame["series"])) == ["concept shown (check)", "loss", "retained ratio (check)"]
    assert frame[frame["series"] == "concept shown (check)"]["loss"].tolist() == [1.0, 0.0625]
    assert "6% (1/16)" in check_note(checks) and "0.97" in check_note(checks)


@pytest.mark.parametrize(
    "method, config, concept",
    [
        (
            "advunlearn",
            {"iterations": 12, "warmup_iterations": 2, "num_inference_steps": 4, "lr": 1e-3, "retain_set": "toy", "retain_batch": 2},
            Concept(["a triangle"]),
        ),
        (
            "doco",
            {"iterations": 12, "warmup_steps": 2, "batch_size": 2, "num_anchor_images": 4, "anchor_steps": 2, "anchor_batch_size": 4},
            Concept(["a triangle"], anchors=["a square"]),
        ),
    ],
)
def test_every_iterative_eraser_stops(method, config, concept):
    judge = StepJudge(erased_at=6)
    result = erase(
        build_tiny_pipe(), concept, method, config=config, stop_when=stop_for(judge, check_every=4), callback=judge.callback, progress=False
    )
    stop = result.stats["stop"]
    assert (stop["reason"], stop["step"], result.stats["steps"]) == ("erased", 8, 8)
    assert [c["step"] for c in stop["checks"]] == [0, 4, 8]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([str(Path(__file__))]))


def test_until_erased_benchmark_sets_each_stop_beside_the_fixed_preset_on_one_evaluation(tmp_path, monkeypatch):
    until = load_benchmark("until_erased")
    monkeypatch.setattr(until, "CELLS", tmp_path / "until")
    monkeypatch.setattr(until.sweep, "CELLS", tmp_path / "sweep")
    fixed = until.preset_setting("esd-x")
    assert fixed == {"lr": 1e-3, "iterations": 50}  # the toy preset, spelled as the sweep's confirm cells spell it

    def write(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    for concept, (until_shown, fixed_shown, reason) in {"circle": (0, 40, "erased"), "square": (20, 24, "utility")}.items():
        write(until.sweep.original_confirm_path(concept), {"shown": 40, "n": 40, "retained_k": 100, "retained_n": 100})
        write(
            until.sweep.confirm_path("esd-x", fixed, concept),
            {"setting": fixed, "shown": fixed_shown, "n": 40, "retained_k": 95, "retained_n": 100, "seconds": 60, "unet_evals": 2754},
        )
        write(
            until.cell_path("esd-x", concept),
            {
                "reason": reason,
                "step": 40,
                "kept_step": 30 if reason == "utility" else 40,
                "checks": [{}] * 5,
                "unet_evals": 9000,
                "check_unet_evals": 6400,
                "shown": until_shown,
                "n": 40,
                "retained_k": 90 if concept == "circle" else 70,
                "retained_n": 100,
            },
        )
    data, table = until.report(["esd-x"], ["circle", "square"])
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| c") or line.startswith("| s")}
    assert "erased at 40 (40)" in rows["circle"] and "*0% (0/40)" in rows["circle"]  # 0/40 against 40/40: beyond both intervals
    assert "utility at 40 (30)" in rows["square"] and "*" not in rows["square"]  # 20/40 against 24/40: within them
    assert "2,600 + 6,400 = 9,000 | 2,754" in rows["circle"] and "0.90 | 100% (40/40) [91, 100], 0.95" in rows["circle"]
    assert "1 erased, 1 by the guard" in table and "3.27x" in table  # 18,000 / 5,508 UNet evaluations
    assert "kept: until 1/2, fixed 2/2" in table  # of 100/100: 90/100 and 95/100 within 0.9 x the interval, 70/100 beyond


def test_guard_fails_on_evidence_not_on_one_image():
    from erasers.stopping import guard_ok

    interval, point = stop_for(StepJudge()), stop_for(StepJudge(), guard_rule="point")
    dip = {"retained": 7 / 8, "retained_k": 7, "retained_n": 8, "retained_ratio": 7 / 8}  # one image of 8 lost
    assert guard_ok(interval, dip, 1.0) and not guard_ok(point, dip, 1.0)
    fall = {"retained": 4 / 8, "retained_k": 4, "retained_n": 8, "retained_ratio": 4 / 8}  # upper bound 0.79 < 0.9
    assert not guard_ok(interval, fall, 1.0) and not guard_ok(point, fall, 1.0)
    assert guard_ok(stop_for(StepJudge(), min_retained=None, retain=[]), fall, 1.0)
    with pytest.raises(ValueError, match="guard_rule='loose'"):
        stop_for(StepJudge(), guard_rule="loose")
