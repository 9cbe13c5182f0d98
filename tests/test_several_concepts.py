"""Several concepts into one model: one solve for UCE and RECE, a shared prompt set for ESD and AdvUnlearn."""

import numpy as np
import pytest

from conftest import HAS_TOY, build_tiny_pipe
from erasers import Concept, erase, several_concepts, toy_target
from erasers.base import merge_concepts


def test_merge_joins_prompts_and_drops_erased_prompts_from_the_retain_set():
    a = Concept(["a triangle", "a wedge"], retain=["a circle", "a star"], name="triangle")
    b = Concept(["a star"], anchors=["a square"], retain=["a circle", "a triangle"], name="star")
    m = merge_concepts([a, b])
    assert m.prompts == ["a triangle", "a wedge", "a star"]
    assert m.anchors == [None, None, "a square"]  # one guide per prompt; None: the method's default
    assert m.retain == ["a circle"]  # each concept's retain set named the other erased concept
    assert m.name == "triangle+star"
    assert merge_concepts(a) is a and merge_concepts([a]) is a
    with pytest.raises(ValueError, match="list of Concepts"):
        merge_concepts([])


def test_toy_targets_for_a_group_do_not_preserve_each_other():
    targets = toy_target("uce", "triangle+star")
    assert [t.name for t in targets] == ["triangle", "star"]
    for t in targets:
        assert "a circle" in t.retain  # the kind's other concepts stay preserved
        assert not {r.lower() for r in t.retain} & {p.lower() for u in targets for p in u.prompts}
    assert toy_target("uce", ["striped", "dotted"])[1].name == "dotted"


def test_which_methods_take_several_concepts_and_a_clear_error_for_the_others():
    assert several_concepts("uce") == several_concepts("rece") == "one solve"
    assert several_concepts("esd-x") == several_concepts("advunlearn") == "shared prompt set"
    assert several_concepts("doco") is None
    pipe = build_tiny_pipe()
    with pytest.raises(ValueError, match="doco erases one concept at a time; erase several at once with .*uce"):
        erase(pipe, [Concept("a triangle"), Concept("a star")], "doco")


def test_esd_draws_from_the_shared_prompt_set():
    """ESD-x with two concepts trains on both concepts' prompts: its result names the joined set, and a
    model erased with both differs from one erased with either alone (same seed and steps)."""
    cfg = {"iterations": 4, "num_inference_steps": 2, "batch_size": 1}
    pipes = {k: build_tiny_pipe() for k in ("both", "first")}
    both = erase(pipes["both"], [Concept("a triangle"), Concept("a star")], "esd-x", config=dict(cfg), progress=False)
    first = erase(pipes["first"], [Concept("a triangle")], "esd-x", config=dict(cfg), progress=False)
    assert both.concept.prompts == ["a triangle", "a star"] and both.concept.name == "a triangle+a star"
    assert first.concept.prompts == ["a triangle"]
    assert any(not np.allclose(both.weights[k].numpy(), first.weights[k].numpy()) for k in both.weights)


@pytest.mark.skipif(not HAS_TOY, reason="needs the shipped toy model")
def test_uce_erases_two_shapes_in_one_solve_and_keeps_the_others(judge):
    """UCE's toy preset on {triangle, star} in one solve lowers both concepts' judged rates; circles and
    squares stay. Measured here (3 seeds x 6 prompts, DDIM 20): see benchmarks/results/multi_concept.md."""
    from erasers.evaluate import EvalConfig, generate
    from studio.loading import load_pipeline
    from studio.toyworld.captions import prompts_for

    cfg = EvalConfig(seeds=3, num_inference_steps=20)
    pipe = load_pipeline("toy", device="cpu")
    asked = {n: [p for p, _ in prompts_for(n, "direct", 6)] for n in ("triangle", "star", "circle", "square")}
    before = {n: judge.shows(generate(pipe, ps, cfg), n).mean() for n, ps in asked.items()}
    result = erase(pipe, toy_target("uce", "triangle+star"), "uce", preset="toy", progress=False)
    after = {n: judge.shows(generate(pipe, ps, cfg), n).mean() for n, ps in asked.items()}
    assert result.concept.name == "triangle+star" and result.stats["erase_rows"] > 0
    assert min(before["triangle"], before["star"]) >= 0.8, before
    assert after["triangle"] <= 0.5 * before["triangle"] and after["star"] <= 0.6 * before["star"], (before, after)
    assert after["circle"] >= 0.75 * before["circle"] and after["square"] >= 0.75 * before["square"], (before, after)


@pytest.mark.parametrize("method", ["uce", "rece"])
def test_closed_forms_take_the_clis_call_without_a_stop_rule(method):
    """`studio erase` passes stop_when=None to every method; the closed forms (no steps) must take it."""
    pipe = build_tiny_pipe()
    result = erase(pipe, Concept("a triangle"), method, stop_when=None, progress=False)
    assert result.method == method and result.weights
