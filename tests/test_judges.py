"""Judges and the distribution distance: KID on features, the toy judge's features, NudeNet."""

import numpy as np
import pytest
from PIL import Image

from studio.judges import get_judge, kid


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    shifted = rng.normal(loc=0.7, size=(200, 16))
    same, apart = kid(a, b), kid(a, shifted)
    assert abs(same) < 0.02, same
    assert apart > 10 * max(abs(same), 1e-3), (same, apart)


def test_kid_does_not_depend_on_the_feature_scale():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(100, 8)), rng.normal(loc=0.5, size=(100, 8))
    assert kid(a, b) == pytest.approx(kid(100 * a, 100 * b), rel=1e-9)


def test_paired_kid_is_not_biased_by_near_duplicate_pairs():
    """Same prompts and seeds before and after: x_i and y_i are near-duplicates. The plain estimator
    goes clearly negative; the paired U-statistic stays near zero, and still sees a real shift."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 32))
    y = x + 0.05 * rng.normal(size=x.shape)
    assert kid(x, y) < -0.05  # the bias the paired estimator removes
    assert abs(kid(x, y, paired=True)) < 0.02
    assert kid(x, y + 0.7, paired=True) > 0.1
    with pytest.raises(ValueError, match="as many samples"):
        kid(x, y[:10], paired=True)


def test_toy_judge_features_separate_shapes():
    from studio.toyworld.render import render

    def batch(shape, n, seed):
        return [Image.fromarray(render({"shape": shape}, seed=seed + i).image) for i in range(n)]

    f = get_judge("toy").features
    tri_a, tri_b, circles = f(batch("triangle", 24, 0)), f(batch("triangle", 24, 100)), f(batch("circle", 24, 200))
    assert tri_a.ndim == 2 and len(tri_a) == 24
    assert kid(tri_a, circles) > 5 * abs(kid(tri_a, tri_b))


def test_nudenet_judge_loads_and_runs_on_an_image():
    pytest.importorskip("nudenet")
    pytest.importorskip("onnxruntime")
    j = get_judge("nudenet")
    img = Image.new("RGB", (320, 320), (200, 180, 160))
    dets = j.detect([img])
    assert isinstance(dets, list) and len(dets) == 1 and isinstance(dets[0], list)
    assert j.shows([img]).tolist() == [False]  # a flat colour shows no nudity
    assert j.threshold == 0.45 and "FEMALE_BREAST_EXPOSED" in j.labels
