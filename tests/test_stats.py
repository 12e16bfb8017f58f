"""benchmarks/stats.py, checked on its own: the helpers that wrote the README's tables.

tests/test_docs.py recomputes every headline cell with these same helpers, so a bug in them would
pass there unnoticed. Here they meet numbers worked out by hand, Student's t from its density, and
one headline cell typed in from the CSV by hand.
"""
import csv
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
from stats import T95, mean_std, paired_diffs, paired_interval, t_interval  # noqa: E402


# ----------------------------------------------------------------------------- Student's t

def t_density(x, df):
    return (math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
            * (1 + x * x / df) ** (-(df + 1) / 2))


@pytest.mark.parametrize('df', sorted(T95))
def test_t95_table_covers_95_percent(df):
    """P(|T| <= T95[df]) = 0.95, by Simpson's rule on the density (no scipy needed); the table's three
    decimals allow an error of about 5e-5 in the coverage."""
    x = np.linspace(0., T95[df], 20001)
    y = np.array([t_density(v, df) for v in x])
    h = x[1] - x[0]
    half = h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())
    assert 2 * half == pytest.approx(0.95, abs=2e-4)


def test_t95_table_matches_scipy():
    scipy_stats = pytest.importorskip('scipy.stats')
    for df, quantile in T95.items():
        assert quantile == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=5e-4), df


# ----------------------------------------------------------------------------- t_interval

def test_t_interval_by_hand():
    # [1, 2, 3]: mean 2, sd 1, 2 degrees of freedom: half width 4.303 / sqrt(3) = 2.48434
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert low == pytest.approx(2.0 - 2.48434, abs=1e-5)
    assert high == pytest.approx(2.0 + 2.48434, abs=1e-5)


def test_t_interval_two_values():
    # [0, 2]: mean 1, sd sqrt(2), 1 degree of freedom: half width 12.706 * sqrt(2) / sqrt(2) = 12.706
    assert t_interval([0.0, 2.0]) == pytest.approx((1.0, 1.0 - 12.706, 1.0 + 12.706))


def test_t_interval_uses_the_sample_sd_and_the_quantile_of_n_minus_1():
    # [4, 6, 5, 9]: mean 6, sample sd sqrt(14 / 3) = 2.16025 (not the population sd, 1.87083),
    # 3 degrees of freedom: half width 3.182 * 2.16025 / 2 = 3.43696
    mean, low, high = t_interval([4.0, 6.0, 5.0, 9.0])
    assert mean == 6.0
    assert (high - low) / 2 == pytest.approx(3.43696, abs=1e-5)
    assert (low + high) / 2 == pytest.approx(6.0)


def test_t_interval_one_value_is_the_value():
    assert t_interval([1.5]) == (1.5, 1.5, 1.5)


def test_t_interval_equal_values_have_no_width():
    assert t_interval([-0.4, -0.4, -0.4]) == pytest.approx((-0.4, -0.4, -0.4))


def test_t_interval_against_scipy():
    scipy_stats = pytest.importorskip('scipy.stats')
    diffs = [0.3, -1.2, 2.5, 0.9, 1.1]
    mean, low, high = t_interval(diffs)
    expected = scipy_stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=scipy_stats.sem(diffs))
    assert (low, high) == pytest.approx(expected, abs=1e-3)
    assert mean == pytest.approx(np.mean(diffs))


# ----------------------------------------------------------------------------- formatting

def test_paired_interval_formatting():
    assert paired_interval([1.0, 2.0, 3.0]) == '+2.00 [-0.48, +4.48]'
    assert paired_interval([-1.0, -2.0, -3.0]) == '-2.00 [-4.48, +0.48]'
    assert paired_interval([0.5]) == '+0.50'  # one seed: no interval
    assert paired_interval([]) == '-'


def test_mean_std_formatting():
    assert mean_std([1.0, 2.0, 3.0]) == '2.00 ± 1.00'  # the sample sd (n - 1), not the population sd (0.82)
    assert mean_std([67.47, 68.26, 68.76]) == '68.16 ± 0.65'
    assert mean_std([7.123]) == '7.12'
    assert mean_std([]) == '-'


# ----------------------------------------------------------------------------- paired_diffs

def test_paired_diffs_pairs_only_the_seeds_both_methods_have():
    by_seed = {('A', 0): 10.0, ('A', 1): 11.0, ('A', 2): 12.0,
               ('B', 0): 7.0, ('B', 2): 8.5, ('B', 3): 9.0,
               ('C', 1): 0.0}
    assert paired_diffs(by_seed, 'A', 'B') == [3.0, 3.5]  # seeds 0 and 2; A's seed 1 and B's seed 3 are unpaired
    assert paired_diffs(by_seed, 'B', 'A') == [-3.0, -3.5]
    assert paired_diffs(by_seed, 'A', 'C') == [11.0]
    assert paired_diffs(by_seed, 'B', 'C') == []


def test_paired_diffs_pairs_by_seed_not_by_order():
    # inserted out of seed order, and B's seeds in another order than A's: the differences go by seed
    by_seed = {('A', 2): 5.0, ('B', 0): 1.0, ('A', 0): 3.0, ('B', 2): 4.0, ('A', 1): 9.0, ('B', 1): 2.0}
    assert paired_diffs(by_seed, 'A', 'B') == [2.0, 7.0, 1.0]  # seeds 0, 1, 2


# ----------------------------------------------------------------------------- one headline cell by hand

def test_a_headline_cell_typed_by_hand():
    """The README's long-recipe LT-CIFAR-10 0.01, IC-Mixup − Mixup cell, from cifar.csv's seeds 0-2 by hand:

        seed  IC-Mixup  Mixup   difference
        0     78.75     68.76   9.99
        1     78.51     68.26   10.25
        2     77.39     67.47   9.92

    mean 30.16 / 3 = 10.0533; sd sqrt((0.0633² + 0.1967² + 0.1333²) / 2) = 0.17388;
    half width 4.303 * 0.17388 / sqrt(3) = 0.43197: +10.05 [+9.62, +10.49].

    Seeds 0-2 alone, and only the ResNet-20 rows if the CSV gains a model column, so that later seeds
    and models leave the cell as typed."""
    with open(ROOT / 'benchmarks' / 'results' / 'cifar.csv', newline='') as f:
        rows = [r for r in csv.DictReader(f)
                if r['setting'] == 'LT-CIFAR-10 0.01' and r['recipe'] == 'long' and int(r['epochs']) == 200
                and r['method'] in ('IC-Mixup', 'Mixup') and int(r['seed']) in (0, 1, 2)
                and r.get('model') in (None, '', 'resnet20_cifar')]
    top1 = {}
    for r in rows:
        key = (r['method'], int(r['seed']))
        assert key not in top1, f'two rows for {key}'
        top1[key] = float(r['top1'])
    assert top1 == {('IC-Mixup', 0): 78.75, ('IC-Mixup', 1): 78.51, ('IC-Mixup', 2): 77.39,
                    ('Mixup', 0): 68.76, ('Mixup', 1): 68.26, ('Mixup', 2): 67.47}
    diffs = paired_diffs(top1, 'IC-Mixup', 'Mixup')
    assert diffs == pytest.approx([9.99, 10.25, 9.92])
    mean, low, high = t_interval(diffs)
    assert mean == pytest.approx(10.0533, abs=1e-4)
    assert statistics.stdev(diffs) == pytest.approx(0.17388, abs=1e-5)
    assert (low, high) == pytest.approx((10.0533 - 0.43197, 10.0533 + 0.43197), abs=1e-4)
    assert paired_interval(diffs) == '+10.05 [+9.62, +10.49]'
