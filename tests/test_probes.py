"""The revival probes (probes/): relearning, inversion, completion, inpainting, at small budgets."""

import json
import threading

import pytest
import torch

import probes
from probes.common import BudgetExceeded, concept_renders, names_concept
from probes.completion import CompletionConfig
from probes.inversion import InversionProbeConfig
from probes.relearning import COMPONENTS, RelearningConfig, compare, component_for, component_parameters, method_component, steps_to
from studio.progress import is_event
from studio.sampling import Cancelled


def snapshot(pipe) -> dict:
    return {f"{m}.{n}": p.detach().clone() for m in ("unet", "text_encoder", "vae") for n, p in getattr(pipe, m).named_parameters()}


def tiny_relearning(**kw) -> RelearningConfig:
    base = dict(images=2, checkpoints=(0, 3), prompts=1, seeds=1, num_inference_steps=2, batch_size=2, lr=1e-3)
    return RelearningConfig(**{**base, **kw})


# ---------------------------------------------------------------- relearning


def test_relearning_on_the_original_toy_model_keeps_the_concept(toy_pipe, judge):
    before = snapshot(toy_pipe)
    events = []
    config = RelearningConfig(images=4, checkpoints=(0, 10), prompts=3, seeds=2, num_inference_steps=20)
    result = probes.run_probe("relearning", toy_pipe, "triangle", config, judge=judge, callback=events.append)
    rates = [p["rate"] for p in result.measurements["curve"]]
    assert [p["step"] for p in result.measurements["curve"]] == [0, 10]
    assert all(r["n"] == 6 for r in rates)
    assert all(r["rate"] >= 0.8 for r in rates), rates  # the original draws triangles before and after
    assert result.summary["steps_to_threshold"] == 0
    assert result.stats["unet_evals"] == config.planned_unet_evals() == 10 * 4 + 2 * 6 * 20 * 2
    assert result.stats["seconds"] > 0
    assert events and all(is_event(e) for e in events) and {e["stage"] for e in events} == {"relearning"}
    after = snapshot(toy_pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the pipeline's weights were put back


@pytest.mark.parametrize("component", ["cross-attention", "unet", "text-encoder"])
def test_relearning_changes_only_the_chosen_component(tiny_pipe, judge, component):
    before = snapshot(tiny_pipe)
    module, names = component_parameters(tiny_pipe, component)
    chosen = {f"{module}.{n}" for n in names}
    probes.run_probe("relearning", tiny_pipe, "triangle", tiny_relearning(component=component, keep_weights=True), judge=judge)
    after = snapshot(tiny_pipe)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was trained"
    assert changed <= chosen, sorted(changed - chosen)[:5]  # every other weight is bit-identical
    assert len(changed) >= 0.5 * len(chosen)
    if component == "cross-attention":
        assert all(".attn2." in k for k in changed)
    if component == "unet":
        assert not any(".attn2." in k for k in changed) and all(k.startswith("unet.") for k in changed)
    if component == "text-encoder":
        assert all(k.startswith("text_encoder.") for k in changed)


def test_relearning_puts_the_weights_back_by_default(tiny_pipe, judge):
    before = snapshot(tiny_pipe)
    result = probes.run_probe("relearning", tiny_pipe, "triangle", tiny_relearning(), judge=judge)
    after = snapshot(tiny_pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(before[f"unet.{n}"], w) for n, w in result.weights.items())  # it did train


def test_a_killed_relearning_run_resumes_exactly(tmp_path, judge):
    from conftest import build_tiny_pipe

    config = tiny_relearning(checkpoints=(0, 4, 8), checkpoint_every=2)
    whole = probes.run_probe("relearning", build_tiny_pipe(), "triangle", config, judge=judge)

    stop = threading.Event()

    def kill_at_5(info):
        if info.get("phase") != "judging" and info["step"] >= 5:
            stop.set()

    with pytest.raises(Cancelled):
        probes.run_probe(
            "relearning", build_tiny_pipe(), "triangle", config, judge=judge, checkpoint_dir=tmp_path, callback=kill_at_5, cancel=stop
        )
    assert (tmp_path / "checkpoint.safetensors").is_file()
    resumed = probes.run_probe("relearning", build_tiny_pipe(), "triangle", config, judge=judge, checkpoint_dir=tmp_path)
    assert resumed.stats["resumed_from"] == 5
    assert resumed.measurements["curve"] == whole.measurements["curve"]
    assert resumed.stats["unet_evals"] == whole.stats["unet_evals"]
    for n, w in whole.weights.items():
        assert torch.equal(w, resumed.weights[n]), n
    # a finished run read back again does no work and gives the same result
    again = probes.run_probe("relearning", build_tiny_pipe(), "triangle", config, judge=judge, checkpoint_dir=tmp_path)
    assert again.stats["resumed_from"] == 8 and again.measurements["curve"] == whole.measurements["curve"]


def test_steps_to_threshold_and_the_ratio_to_the_oracle():
    assert steps_to([(0, 0.0), (10, 0.2), (25, 0.8)], 0.5) == pytest.approx(17.5)
    assert steps_to([(0, 0.6), (10, 0.9)], 0.5) == 0.0
    assert steps_to([(0, 0.0), (200, 0.4)], 0.5) is None
    erased = probes.ProbeResult("relearning", "triangle", {}, {}, {"steps_to_threshold": 10.0, "steps": 200, "threshold": 0.5})
    oracle = probes.ProbeResult("relearning", "triangle", {}, {}, {"steps_to_threshold": 100.0, "steps": 200, "threshold": 0.5})
    never = probes.ProbeResult("relearning", "triangle", {}, {}, {"steps_to_threshold": None, "steps": 200, "threshold": 0.5})
    assert compare(erased, oracle)["ratio_to_oracle"] == pytest.approx(0.1)
    assert compare(erased, never)["ratio_upper_bound"] == pytest.approx(10 / 200)
    assert "neither" in compare(never, never)["ratio_text"]


def test_component_is_read_from_the_erased_folder(tmp_path):
    for method, component in [("esd-x", "cross-attention"), ("esd-u", "unet"), ("advunlearn", "text-encoder"), ("doco", "cross-attention")]:
        folder = tmp_path / method
        folder.mkdir()
        (folder / "erasure.json").write_text(json.dumps({"method": method, "config": {}}))
        assert component_for(folder) == component
    assert component_for(tmp_path / "nothing-here") == "cross-attention"
    assert component_for("toy", default=None) is None
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "erasure.json").write_text(json.dumps({"method": "magic"}))
    with pytest.raises(ValueError, match="magic"):
        component_for(tmp_path / "odd")


def test_every_registered_eraser_has_a_component_at_each_preset():
    """The revival table and the app ask `method_component` for every registered eraser (STEREO trains what
    its train_method names: esd-u officially, esd-x on the toy; DoCo's full-weight group the whole UNet)."""
    from erasers import METHODS, PRESETS, get_config

    for method in METHODS:
        for preset in PRESETS:
            assert method_component(method, get_config(method, preset)) in COMPONENTS
    assert method_component("stereo", get_config("stereo", "official")) == "unet"
    assert method_component("stereo", get_config("stereo", "toy")) == "cross-attention"
    assert method_component("doco", {"parameter_group": "full-weight"}) == "unet-all"


# ---------------------------------------------------------------- inversion, completion, inpainting

PSNR_FLOOR = 20.0  # dB; DDIM inversion at 20 steps on the toy model reconstructs renders at ~25 dB (VAE round trip ~27)


def test_inversion_of_renders_with_the_original_toy_model_reconstructs_them(toy_pipe, judge):
    events = []
    config = InversionProbeConfig(images=2, methods=("ddim",), num_inference_steps=20)
    result = probes.run_probe("inversion", toy_pipe, "triangle", config, judge=judge, callback=events.append)
    ddim = result.measurements["methods"]["ddim"]
    assert ddim["psnr"] > PSNR_FLOOR and ddim["psnr_min"] > PSNR_FLOOR - 3, ddim
    assert ddim["psnr"] <= result.measurements["vae_roundtrip_psnr"] + 1.0  # no better than the VAE allows
    assert ddim["rate"]["n"] == 2 and ddim["rate"]["k"] >= 1
    assert result.stats["unet_evals"] == 2 * 2 * 20  # inversion + reconstruction, guidance 1
    assert events and all(is_event(e) for e in events)
    assert result.grid() is not None


def test_completion_and_inpainting_report_rates_with_costs(toy_pipe, judge):
    events = []
    comp = probes.run_probe(
        "completion", toy_pipe, "triangle", probes.get_config("completion", budget="small"), judge=judge, callback=events.append
    )
    cells = comp.measurements["cells"]
    assert set(cells) == {"0.5/concept", "0.5/empty"}
    assert all(c["rate"]["n"] == 2 for c in cells.values())
    assert cells["0.5/concept"]["rate"]["k"] >= 1  # the original finishes its own concept
    assert (
        comp.stats["unet_evals"] == probes.get_config("completion", budget="small").planned_unet_evals(toy_pipe) == 2 * 6 * 2 + 2 * 6
    )  # 6 of 10 steps from t=501
    inp = probes.run_probe(
        "inpainting", toy_pipe, "triangle", probes.get_config("inpainting", budget="small"), judge=judge, callback=events.append
    )
    assert set(inp.measurements["cells"]) == {"concept", "empty"}
    assert inp.measurements["context_only"]["n"] == 2
    assert 0.2 < inp.measurements["masked_share"] < 0.8
    assert inp.stats["unet_evals"] == 2 * 10 * 2 + 2 * 10
    assert all(is_event(e) for e in events)


def test_the_inpainting_mask_hides_half_of_the_object():
    import numpy as np

    from probes.inpainting import half_mask

    r = concept_renders("triangle", 1)[0]
    m = half_mask(r.mask, "right")
    assert (r.mask & m).sum() > 0 and (r.mask & ~m).sum() > 0  # half of the object is hidden, half stays
    assert np.array_equal(half_mask(r.mask, "left"), ~m)


def test_renders_show_the_concept_and_captions_name_it(judge):
    renders = concept_renders("striped", 6, seed=3)
    assert all(r.labels["style"] == "striped" for r in renders)
    assert all(names_concept(r.caption, "striped") for r in renders)
    assert judge.shows([r.image for r in renders], "striped").mean() >= 0.8
    assert [r.caption for r in concept_renders("striped", 6, seed=3)] == [r.caption for r in renders]  # deterministic


# ---------------------------------------------------------------- bad inputs, budget, cancel


def test_bad_inputs_are_clear_value_errors(tiny_pipe):
    with pytest.raises(ValueError, match="hexagon"):
        probes.run_probe("completion", tiny_pipe, "hexagon")
    with pytest.raises(ValueError, match="background"):
        probes.run_probe("completion", tiny_pipe, "dark")
    with pytest.raises(ValueError, match="k=0|images"):
        RelearningConfig(images=0)
    with pytest.raises(ValueError, match="k=0"):
        concept_renders("triangle", 0)
    with pytest.raises(ValueError, match="images"):
        probes.run_probe("relearning", tiny_pipe, "triangle", {"images": 0})
    for level in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"outside \(0, 1\)"):
            CompletionConfig(noise_levels=(level,))
    with pytest.raises(ValueError, match="unknown probe"):
        probes.run_probe("telepathy", tiny_pipe, "triangle")
    with pytest.raises(ValueError, match="no setting"):
        probes.get_config("inversion", {"imagez": 2})
    with pytest.raises(ValueError, match="component"):
        RelearningConfig(component="vae")
    with pytest.raises(ValueError, match="method"):
        InversionProbeConfig(methods=("magic",))


def test_a_plan_over_the_budget_is_refused_before_any_work(tiny_pipe, judge):
    before = snapshot(tiny_pipe)
    with pytest.raises(BudgetExceeded, match="max_unet_evals=10"):
        probes.run_probe("relearning", tiny_pipe, "triangle", tiny_relearning(max_unet_evals=10), judge=judge)
    assert all(torch.equal(before[k], v) for k, v in snapshot(tiny_pipe).items())


def test_probes_can_be_cancelled(tiny_pipe, judge):
    for name in ("completion", "inpainting", "inversion"):
        with pytest.raises(Cancelled):
            probes.run_probe(name, tiny_pipe, "triangle", probes.get_config(name, budget="small"), judge=judge, cancel=lambda: True)


# ---------------------------------------------------------------- studio probe


def run_cli(argv):
    import argparse

    from probes.cli import register

    parser = argparse.ArgumentParser(prog="studio")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["probe", *argv])
    return args.fn(args)


def test_studio_probe_writes_report_and_grids(tmp_path):
    out = tmp_path / "probe"
    assert (
        run_cli(["--erased", "toy", "--concept", "wedge", "--probes", "completion,inpainting", "--budget", "small", "--out", str(out)]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["concept"] == "triangle"  # a synonym names the concept
    results = report["models"]["original"]["results"]
    assert set(results) == {"completion", "inpainting"}
    assert all(r["stats"]["unet_evals"] > 0 for r in results.values())
    md = (out / "report.md").read_text()
    assert "## completion" in md and "context only" in md and "[" in md  # rates with intervals
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["original-completion.png", "original-inpainting.png"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concept", "hexagon"], "hexagon"),
        (["--k", "0", "--probes", "relearning"], "at least one image"),
        (["--probes", "relearning,telepathy"], "telepathy"),
        (["--oracle", "/nowhere/oracle"], "no oracle"),
        (["--set", "completion.noise_levels=[1.5]", "--probes", "completion"], r"outside \(0, 1\)"),
    ],
)
def test_studio_probe_rejects_bad_input_before_any_work(tmp_path, argv, message):
    out = tmp_path / "probe"
    base = {"--erased": "toy", "--concept": "triangle", "--probes": "completion", "--out": str(out)}
    for flag in argv[::2]:
        base.pop(flag, None)
    full = [x for kv in base.items() for x in kv] + argv
    with pytest.raises(ValueError, match=message):
        run_cli(full)
    assert not out.exists()
