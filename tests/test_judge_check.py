"""The second toy judge (toy-check), the abstain rule (toy-strict) and how the evaluation counts
abstentions apart, and the judge-agreement benchmark's core measures on hand-made cases."""

import numpy as np
import pytest
import torch
from conftest import load_benchmark
from PIL import Image

from erasers.evaluate import EvalConfig, EvalSpec, erasure_rates, format_table, rate_from, rate_of_verdicts, utility, with_abstain
from studio.judges import StrictJudge, abstain_verdicts, get_judge
from studio.stats import Rate
from studio.toyworld.models import HEADS

# ----------------------------------------------------------------------------- the check judge


def test_the_check_judge_loads_and_reads_renders():
    from studio.toyworld.render import render

    judge = get_judge("toy-check")
    assert judge.name == "toy-check"
    renders = [render(seed=1000 + i) for i in range(60)]
    preds = judge.predict([Image.fromarray(r.image) for r in renders])
    for a in ("shape", "colour", "style", "background"):
        right = sum(p[a] == r.labels[a] for p, r in zip(preds, renders))
        assert right >= 57, (a, right)  # >= 95%
    tri = [Image.fromarray(render({"shape": "triangle"}, seed=i).image) for i in range(8)]
    assert judge.shows(tri, "triangle").all()


def test_a_morph_is_each_shape_at_its_ends_and_in_between_halfway():
    from studio.toyworld.render import silhouette
    from studio.toyworld.train import _morph

    s = np.linspace(-1.3, 1.3, 161)
    v, u = np.meshgrid(s, s, indexing="ij")
    square, circle = silhouette("square", u, v), silhouette("circle", u, v)
    assert (_morph("square", "circle", 0.0, u, v) == square).mean() > 0.995  # corners kept (no rounding)
    assert (_morph("square", "circle", 1.0, u, v) == circle).mean() > 0.995
    half = _morph("square", "circle", 0.5, u, v)
    assert 0.01 < (half != square).mean() and 0.01 < (half != circle).mean()


def test_generation_like_batches_leave_ambiguous_blends_out_of_the_loss():
    from studio.toyworld.train import IGNORE, judge_batch

    x, y = judge_batch(np.random.default_rng(3), 96, augment="generation")
    assert x.shape == (96, 3, 32, 32) and float(x.abs().max()) <= 1.5
    assert (y["shape"] == IGNORE).any(), "some morphs have no dominant shape"
    labelled = y["shape"][y["shape"] != IGNORE]
    assert ((labelled >= 0) & (labelled < len(HEADS["shape"]))).all()
    assert (y["background"] != IGNORE).all()  # the background is always known
    _, plain = judge_batch(np.random.default_rng(3), 32)
    assert all((v != IGNORE).all() for v in plain.values())  # the shipped judge's recipe is untouched
    with pytest.raises(ValueError, match="judge augment"):
        judge_batch(np.random.default_rng(0), 4, augment="blurry")


# ----------------------------------------------------------------------------- the abstain rule


def test_abstain_when_the_judges_disagree_or_either_is_unsure():
    # class 0 asked; rows: both sure yes, both sure no, they disagree, A unsure, B unsure
    a = np.array([[0.95, 0.05], [0.02, 0.98], [0.97, 0.03], [0.6, 0.4], [0.99, 0.01]])
    b = np.array([[0.99, 0.01], [0.05, 0.95], [0.02, 0.98], [0.99, 0.01], [0.7, 0.3]])
    assert abstain_verdicts(a, b, 0, threshold=0.9).tolist() == [1, 0, -1, -1, -1]
    assert abstain_verdicts(a, b, 0, threshold=0.5).tolist() == [1, 0, -1, 1, 1]  # only the disagreement is left
    with pytest.raises(ValueError, match="threshold"):
        abstain_verdicts(a, b, 0, threshold=1.5)
    with pytest.raises(ValueError, match="one shape"):
        abstain_verdicts(a, b[:2], 0)


class StubToyJudge:
    """A ToyJudge stand-in: fixed shape probabilities per image (other heads uniform)."""

    def __init__(self, shape_probs):
        self.shape_probs = np.asarray(shape_probs, dtype=np.float32)

    def probabilities(self, images):
        n = len(images)
        out = {a: torch.full((n, len(v)), 1 / len(v)) for a, v in HEADS.items()}
        out["shape"] = torch.from_numpy(self.shape_probs[:n])
        return out

    def predict(self, images):
        return [{"shape": HEADS["shape"][int(i)]} for i in self.shape_probs[: len(images)].argmax(-1)]


def one_hot(index, p=0.97):
    row = np.full(len(HEADS["shape"]), (1 - p) / (len(HEADS["shape"]) - 1))
    row[index] = p
    return row


TRI, STAR = HEADS["shape"].index("triangle"), HEADS["shape"].index("star")


def test_the_strict_judge_abstains_on_disagreement_and_low_confidence():
    a = [one_hot(TRI), one_hot(STAR), one_hot(TRI), one_hot(TRI, 0.55)]
    b = [one_hot(TRI), one_hot(STAR), one_hot(STAR), one_hot(TRI)]
    strict = StrictJudge(StubToyJudge(a), StubToyJudge(b), threshold=0.8)
    images = [None] * 4
    assert strict.verdicts(images, "triangle").tolist() == [1, 0, -1, -1]
    assert strict.shows(images, "triangle").tolist() == [True, False, False, False]
    assert strict.verdicts(images, "wedge").tolist() == [1, 0, -1, -1]  # a synonym asks the same head


class VerdictJudge:
    """Scripted verdicts per call: 1, 0, -1, 1, 0, -1 ... over the images of each call."""

    name = "verdicts"

    def verdicts(self, images, concept):
        return np.array([(1, 0, -1)[i % 3] for i in range(len(images))], dtype=np.int8)

    def shows(self, images, concept):
        return self.verdicts(images, concept) == 1


SPEC = EvalSpec("triangle", {"direct": ["a triangle", "a red triangle"]}, [("a red square", {"shape": "square"})])


def test_the_evaluation_counts_abstentions_apart(tiny_pipe):
    config = EvalConfig(seeds=3, num_inference_steps=2, batch_size=8)  # 2 prompts x 3 seeds: verdicts 1 0 -1 1 0 -1
    rates, _ = erasure_rates(tiny_pipe, tiny_pipe, SPEC, VerdictJudge(), config)
    d = rates["direct"]
    assert rate_from(d["erased_shown"]) == Rate(2, 4, 2)  # shown of the decided, 2 abstained
    assert rate_from(d["erasure"]) == Rate(2, 4, 2)  # does not show, of the decided
    assert d["erasure_success"] == 0.5
    u = utility(tiny_pipe, tiny_pipe, SPEC, VerdictJudge(), config)  # 1 retain prompt x 3 seeds
    assert rate_from(u["retained_erased"]) == Rate(1, 2, 1)
    report = {"erasure": rates, "utility": u, "attack": {}}
    text = format_table(report)
    assert "50% (2/4) [15, 85], 2 abstained" in text


def test_abstain_option_wraps_the_toy_judge_and_refuses_a_judge_that_cannot_abstain():
    toy = get_judge("toy")
    assert with_abstain(toy, False) is toy
    strict = with_abstain(toy, True)
    assert strict.name == "toy-strict" and strict.judge is toy.judge
    assert EvalConfig().abstain is False  # the default keeps every image judged shown or not

    class Plain:
        name = "plain"

        def shows(self, images, concept):
            return np.zeros(len(images), bool)

    with pytest.raises(ValueError, match="abstain=False"):
        with_abstain(Plain(), True)


# ----------------------------------------------------------------------------- the benchmark's measures


def test_agreement_and_accuracy_on_a_hand_made_case():
    m = load_benchmark("judge_agreement")
    a = [{"shape": "triangle", "colour": "red"}, {"shape": "star", "colour": "red"}, {"shape": "circle", "colour": "blue"}]
    b = [{"shape": "triangle", "colour": "red"}, {"shape": "triangle", "colour": "red"}, {"shape": "circle", "colour": "green"}]
    agree = m.agreement(a, b, attributes=("shape", "colour"))
    assert agree == {"shape": Rate(2, 3), "colour": Rate(2, 3)}
    labels = [{"shape": "triangle", "colour": "red"}, {"shape": "unclear", "colour": "red"}, {"shape": "square", "colour": "blue"}]
    acc = m.accuracy(a, labels, attributes=("shape", "colour"))
    assert acc["shape"] == Rate(1, 2, 1)  # the unclear label is left out, counted apart
    assert acc["colour"] == Rate(3, 3)
    assert rate_of_verdicts([1, 0, -1, 1]) == Rate(2, 3, 1)
    with pytest.raises(ValueError, match="different numbers"):
        m.agreement(a, b[:2])
