"""Exact binomial intervals against Rümke's table and closed forms."""

import math

import pytest

from smearflow.reporting.stats import binomial_interval, percent_interval

# Rümke's table (95%, Clopper-Pearson) for a 100-cell differential, percent.
RUMKE_100 = {0: (0.0, 3.6), 1: (0.0, 5.4), 5: (1.6, 11.3), 10: (4.9, 17.6), 20: (12.7, 29.2), 50: (39.8, 60.2)}


@pytest.mark.parametrize("k", sorted(RUMKE_100))
def test_percent_interval_matches_rumkes_table_at_100_cells(k):
    assert percent_interval(k, 100) == RUMKE_100[k]


@pytest.mark.parametrize("n", [1, 7, 100, 200, 1000])
def test_zero_and_all_successes_have_the_closed_form(n):
    # P(X = 0) = (1 - p)^n = 0.025 at the upper bound of k = 0.
    upper = 1.0 - 0.025 ** (1.0 / n)
    assert binomial_interval(0, n) == (0.0, pytest.approx(upper, rel=1e-9))
    assert binomial_interval(n, n) == (pytest.approx(1.0 - upper, rel=1e-9), 1.0)


def test_the_bounds_put_two_and_a_half_percent_in_each_tail():
    from scipy.stats import binom

    k, n = 12, 200
    low, high = binomial_interval(k, n)
    assert binom.sf(k - 1, n, low) == pytest.approx(0.025, abs=1e-9)  # P(X >= k | low)
    assert binom.cdf(k, n, high) == pytest.approx(0.025, abs=1e-9)  # P(X <= k | high)


def test_intervals_are_symmetric_and_narrow_with_more_cells():
    low, high = binomial_interval(30, 100)
    low2, high2 = binomial_interval(70, 100)
    assert (low, high) == (pytest.approx(1 - high2), pytest.approx(1 - low2))
    assert high - low > (lambda b: b[1] - b[0])(binomial_interval(120, 400))
    assert binomial_interval(3, 10, 0.99)[1] > binomial_interval(3, 10, 0.95)[1]


def test_nothing_counted_has_no_interval():
    assert percent_interval(0, 0) is None


@pytest.mark.parametrize(
    "args, message",
    [
        ((1, 0), "trials must be at least 1"),
        ((5, 4), "successes must be in"),
        ((-1, 4), "successes must be in"),
        ((1.5, 4), "successes must be an integer"),
        ((1, True), "trials must be an integer"),
        ((1, 4, 1.0), "level must be in"),
        ((1, 4, math.nan), "level must be in"),
    ],
)
def test_bad_arguments_are_refused_with_what_was_received(args, message):
    with pytest.raises(ValueError, match=message):
        binomial_interval(*args)
