"""The Wilson interval against known values, and the one way rates are printed."""

import pytest

from studio.stats import Rate, below, format_rate, overlap, wilson


@pytest.mark.parametrize(
    "k, n, low, high",
    [  # the roots of (k/n - p)^2 n = z^2 p (1 - p), z = 1.96: the Wilson score bounds
        (7, 30, 0.117924, 0.409283),
        (0, 10, 0.0, 0.277533),
        (10, 10, 0.722467, 1.0),
        (23, 50, 0.329697, 0.596011),
        (1, 2, 0.094531, 0.905469),
    ],
)
def test_wilson_matches_known_values(k, n, low, high):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-5) and hi == pytest.approx(high, abs=1e-5)


def test_rates_print_share_count_and_interval():
    assert format_rate(7, 30) == "23% (7/30) [12, 41]"
    assert str(Rate(7, 30, abstained=2)) == "23% (7/30) [12, 41], 2 abstained"
    assert format_rate(0, 0) == "- (0/0)"


def test_overlap_says_when_rows_differ():
    assert overlap(Rate(0, 10), Rate(2, 10))  # 0% vs 20% over 10: not a difference
    assert not overlap(Rate(0, 50), Rate(30, 50))


@pytest.mark.parametrize("k, n", [(-1, 3), (4, 3)])
def test_impossible_counts_are_errors(k, n):
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson(k, n)


def test_below_means_the_whole_interval_is_under_the_bar():
    assert not below(Rate(7, 8), 0.9)  # 88%, but its interval [53, 98] reaches the bar: not shown to fall short
    assert below(Rate(4, 8), 0.9)  # [22, 78]
    assert below(Rate(70, 100), 0.8) and not below(Rate(75, 100), 0.8)  # [60, 78] against [66, 83]
