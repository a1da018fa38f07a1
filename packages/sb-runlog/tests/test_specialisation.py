"""The domain-specialisation score against hand-computed values."""

import math

import pytest
from sb_runlog import domain_expert_nmi


def test_perfect_specialisation_is_one():
    assert domain_expert_nmi([[10, 0], [0, 30]]) == pytest.approx(1.0)
    # two experts share the code domain, one expert serves prose alone: the expert determines the domain
    assert domain_expert_nmi([[5, 5, 0], [0, 0, 7]]) == pytest.approx(1.0)


def test_independence_is_zero():
    assert domain_expert_nmi([[10, 30], [20, 60]]) == pytest.approx(0.0, abs=1e-12)
    assert domain_expert_nmi([[3, 3, 3, 3], [1, 1, 1, 1]]) == pytest.approx(0.0, abs=1e-12)


def test_hand_example():
    # p(d, x) = [[.4, .1], [.1, .4]]; marginals .5/.5: H(D) = H(X) = ln 2
    # I = 2 * .4 ln(.4 / .25) + 2 * .1 ln(.1 / .25) = .8 ln 1.6 + .2 ln .4
    expected = (0.8 * math.log(1.6) + 0.2 * math.log(0.4)) / math.log(2)
    assert domain_expert_nmi([[40, 10], [10, 40]]) == pytest.approx(expected)  # 0.278...
    assert expected == pytest.approx(0.2781, abs=1e-4)


def test_normalised_by_the_smaller_entropy():
    # 3 domains, 2 experts; expert 0 serves only domain a, expert 1 domains b and c:
    # H(X) = ln 2 < H(D) = ln 3, I = H(X) (the domain determines the expert) -> 1
    assert domain_expert_nmi([[2, 0], [0, 1], [0, 1]]) == pytest.approx(1.0)


def test_degenerate_tables():
    assert domain_expert_nmi([[5, 7], [0, 0]]) is None  # one domain has tokens
    assert domain_expert_nmi([]) is None
    assert domain_expert_nmi([[5, 0], [9, 0]]) == 0.0  # every assignment to one expert
