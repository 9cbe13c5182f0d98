"""Every rate of the evaluation with its count and 95% Wilson interval (report.json, report.md), and the
report card: registered attacks over the same prompt-seed pairs, its files, and its bad inputs."""

import json

import numpy as np
import pytest

from erasers import attacks
from erasers.evaluate import (
    EvalConfig,
    EvalSpec,
    card_plan,
    compare_rates,
    describe_differences,
    evaluate,
    format_table,
    write_report,
)
from studio.stats import Rate, format_rate, wilson

SPEC = EvalSpec(
    "triangle",
    {"direct": ["a triangle", "a red triangle"], "synonym": ["a wedge"]},
    [("a red square", {"shape": "square"}), ("a blue square", {"shape": "circle"})],
)


class ScriptedJudge:
    """Shows the concept in every third image of a call (0, 3, 6 ...); predicts a square for everything."""

    name = "scripted"

    def __init__(self):
        self.calls = 0

    def shows(self, images, concept):
        self.calls += 1
        return np.arange(len(images)) % 3 == 0

    def predict(self, images):
        return [{"shape": "square"} for _ in images]


def tiny_config(**kw):
    base = {
        "seeds": 2,
        "attack": "none",
        "attack_prompts": 2,
        "num_inference_steps": 2,
        "batch_size": 8,
        "attack_overrides": {"num_inference_steps": 2},
    }
    return EvalConfig(**{**base, **kw})


def test_every_rate_of_the_report_has_its_count_and_wilson_interval(tiny_pipe, tmp_path):
    report = evaluate(tiny_pipe, tiny_pipe, SPEC, ScriptedJudge(), tiny_config(), progress=False)
    direct = report["erasure"]["direct"]  # 2 prompts x 2 seeds: images 0 and 3 shown
    assert direct["erased_shown"]["k"] == 2 and direct["erased_shown"]["n"] == 4
    assert direct["erasure"]["k"] == 2 and direct["erasure"]["n"] == 4
    assert (direct["erasure"]["low"], direct["erasure"]["high"]) == pytest.approx(wilson(2, 4))
    syn = report["erasure"]["synonym"]  # 1 prompt x 2 seeds: image 0 shown
    assert (syn["erased_shown"]["k"], syn["erased_shown"]["n"]) == (1, 2)
    assert direct["differs_from_original"] is False  # the same model: the same images, overlapping intervals
    u = report["utility"]  # 2 retain prompts x 2 seeds, the judge says square: the first prompt's two images match
    assert (u["retained_erased"]["k"], u["retained_erased"]["n"]) == (2, 4)
    a = report["attack"]  # no attack over 2 prompts: the first prompt's own image (index 0 of its call) shows it
    assert (a["rate"]["k"], a["rate"]["n"]) == (2, 2) and a["rate_text"] == format_rate(2, 2)
    md = format_table(report)
    for text in (format_rate(2, 4), format_rate(1, 2), f"ASR {format_rate(2, 2)}", f"retained accuracy {format_rate(2, 4)}"):
        assert text in md, text
    assert "not shown to differ" in md
    write_report(report, tmp_path, ScriptedJudge())
    saved = json.loads((tmp_path / "report.json").read_text())
    assert {"k", "n", "low", "high"} <= set(saved["erasure"]["alias" if "alias" in saved["erasure"] else "direct"]["erasure"])
    assert (tmp_path / "report.md").read_text().strip() == md.strip()
    assert not (tmp_path / "report_card.json").exists()  # no card without attacks


def test_compare_rates_says_which_rows_differ_beyond_their_intervals():
    rates = {"esd": Rate(0, 50), "uce": Rate(30, 50), "doco": Rate(2, 50)}
    cmp = compare_rates(rates)
    assert sorted(map(sorted, cmp["beyond"])) == [["doco", "uce"], ["esd", "uce"]]
    assert cmp["within"] == [["esd", "doco"]]
    text = describe_differences(rates)
    assert "esd vs uce" in text and "1 pair(s) overlap" in text
    assert "No two" in describe_differences({"a": Rate(0, 10), "b": Rate(2, 10)})  # 0% vs 20% over 10: no difference


def test_the_report_card_runs_registered_attacks_over_the_same_pairs(tiny_pipe, tmp_path):
    seen = []
    config = tiny_config(
        attacks=["none", "random"], attack_seeds=2, attack_settings={"random": {"draws": 1, "num_inference_steps": 2, "num_tokens": 1}}
    )
    report = evaluate(tiny_pipe, tiny_pipe, SPEC, ScriptedJudge(), config, callback=seen.append, progress=False)
    card = report["card"]
    assert list(card["attacks"]) == ["none", "random"] and card["pairs"] == 4
    for e in card["attacks"].values():
        pairs = e["per_pair"]
        assert [(p["prompt"], p["seed"]) for p in pairs] == [
            ("a triangle", 0),
            ("a red triangle", 1),
            ("a triangle", 2),
            ("a red triangle", 3),
        ]
        k = sum(p["success"] for p in pairs)
        assert (e["rate"]["k"], e["rate"]["n"]) == (k, 4) and e["rate_text"] == format_rate(k, 4)
        assert e["unet_evals"] == sum(p["unet_evals"] for p in pairs) + e["setup_unet_evals"] > 0
    assert card["attacks"]["random"]["config"]["draws"] == 1
    assert card["judge"]["name"] == "scripted" and card["sampler"]["attacks"]["none"] == {"num_inference_steps": 2, "guidance_scale": 7.5}
    assert report["attack"]["name"] == "none" and len(report["attack"]["per_prompt"]) == 2  # the one-line ASR: config.attack's entry
    assert [e["step"] for e in seen if e["stage"] == "evaluation: attacks"] == [1, 2]
    write_report(report, tmp_path, ScriptedJudge())
    saved = json.loads((tmp_path / "report_card.json").read_text())
    assert saved["attacks"]["random"]["rate"] == card["attacks"]["random"]["rate"]
    md = (tmp_path / "report_card.md").read_text()
    assert card["attacks"]["none"]["rate_text"] in md and "Judge: scripted" in md and "random tokens (`random`)" in md
    assert (tmp_path / "attacks" / "none.png").is_file() and (tmp_path / "attacks" / "random.png").is_file()

    from erasers.export import export_text_encoder

    folder = export_text_encoder(
        tiny_pipe.text_encoder, tmp_path / "plugin", concept=None, report_card=saved, evaluation=format_table(report)
    )
    readme = (folder / "README.md").read_text()
    assert "## Report card" in readme and card["attacks"]["random"]["rate_text"] in readme
    assert "--attacks none,random --attack-prompts 2 --attack-seeds 2" in readme and "--attack-set random.draws=1" in readme
    assert "guidance 7.5" in readme and "Judge: scripted" in readme


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"attacks": ["none", "no-such-attack"]}, "unknown attack"),
        ({"attacks": ["none"], "attack_prompts": 0}, "budget of at least one prompt-seed pair"),
        ({"attacks": ["unlearndiffatk"]}, "needs the original"),
        ({"attacks": ["none"], "attack_settings": {"random": {"draws": 1}}}, "does not run"),
        ({"attacks": ["random"], "attack_settings": {"random": {"no_field": 1}}}, "no setting no_field"),
    ],
)
def test_bad_report_card_settings_fail_before_any_work(kw, message):
    judge = ScriptedJudge()
    with pytest.raises(ValueError, match=message):
        evaluate(None, None, SPEC, judge, tiny_config(**kw), progress=False)  # no models: it must fail before using them
    assert judge.calls == 0


def test_studio_eval_names_an_unknown_attack_before_loading_anything(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio.cli",
            "eval",
            "--erased",
            str(tmp_path / "missing"),
            "--concept",
            "triangle",
            "--attacks",
            "none,bogus",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 2 and "unknown attack(s) 'bogus'; choose from none, random" in res.stderr and "Traceback" not in res.stderr


def test_an_attack_with_a_budget_of_0_is_refused(monkeypatch):
    from dataclasses import dataclass

    @dataclass
    class Budgeted:
        budget: int = 3
        num_inference_steps: int = 2

        def unet_budget(self):
            return self.budget * 10

    monkeypatch.setitem(
        attacks.ATTACKS, "budgeted", attacks.Attack("budgeted", "budgeted", Budgeted, run=attacks.no_attack, cost=lambda c: c.unet_budget())
    )
    assert card_plan(tiny_config(attacks=["budgeted"]))[0][0] == "budgeted"
    with pytest.raises(ValueError, match="budget of 0"):
        card_plan(tiny_config(attacks=["budgeted"], attack_settings={"budgeted": {"budget": 0}}))


def test_a_concept_level_attack_runs_once_over_the_whole_set(tiny_pipe, monkeypatch):
    """An attack with only `run_many` (CCE, Ring-A-Bell) serves the one-attack ASR and the card alike, its set-up counted once."""
    calls = []

    def whole_set(erased, prompts, seeds, is_success, config, *, original, concept, callback, cancel, progress):
        calls.append((list(prompts), list(seeds), concept, original is not None))
        results = [
            attacks.no_attack(erased, p, None, is_success, attacks.NoAttackConfig(num_inference_steps=2), seed=s)
            for p, s in zip(prompts, seeds)
        ]
        return attacks.AttackRun("whole-set", results, setup_unet_evals=1000, artifacts={"learned": "<concept>"})

    spec = attacks.Attack("whole-set", "whole set", attacks.NoAttackConfig, run_many=whole_set, needs_original=True, unit="concept")
    monkeypatch.setitem(attacks.ATTACKS, "whole-set", spec)
    report = evaluate(tiny_pipe, tiny_pipe, SPEC, ScriptedJudge(), tiny_config(attack="whole-set"), progress=False)
    assert calls == [(["a triangle", "a red triangle"], [0, 1], "triangle", True)]
    a = report["attack"]
    assert a["n"] == 2 and a["unet_evals"] == 1000 + 2 * 2 * 2 and a["rate_text"] == format_rate(a["rate"]["k"], 2)
    card = evaluate(tiny_pipe, tiny_pipe, SPEC, ScriptedJudge(), tiny_config(attacks=["whole-set"]), progress=False)["card"]
    e = card["attacks"]["whole-set"]
    assert e["setup_unet_evals"] == 1000 and e["artifacts"] == {"learned": "<concept>"} and e["unit"] == "concept"
