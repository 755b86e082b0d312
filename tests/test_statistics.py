"""The paired bootstrap interval and the verdict rule, on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from partial_lora.statistics import correctness_text, correctness_vector, paired_difference, verdict


def test_identical_methods_differ_by_exactly_zero():
    scores = {0: np.array([1, 0, 1, 1, 0] * 40), 1: np.array([0, 1, 1, 1, 0] * 40)}
    result = paired_difference(scores, scores)
    assert result.diff_points == 0 and result.ci_low == 0 and result.ci_high == 0
    assert result.verdict == "parity" and result.seeds == (0, 1) and result.examples == 200


def test_the_interval_covers_the_difference_and_shrinks_with_more_examples():
    rng = np.random.default_rng(0)
    widths = []
    for examples in (200, 2000):
        reference = {s: (rng.random(examples) < 0.9).astype(float) for s in range(3)}
        # the method gets 3 % of the examples wrong that the reference got right: -3 points
        method = {s: v.copy() for s, v in reference.items()}
        for s in method:
            flip = rng.choice(np.flatnonzero(method[s] == 1), size=int(0.03 * examples), replace=False)
            method[s][flip] = 0
        result = paired_difference(method, reference, seed=1)
        assert result.ci_low <= result.diff_points <= result.ci_high
        assert result.diff_points == pytest.approx(-100 * int(0.03 * examples) / examples)
        widths.append(result.ci_high - result.ci_low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(N)


def test_pairing_by_example_is_what_makes_small_differences_resolvable():
    """Both methods miss the same hard examples; the method misses 2 more of 1,000: -0.2 points, a
    tight interval because the shared misses cancel example by example."""
    reference = np.ones(1000)
    reference[:300] = 0  # 70 % accuracy: unpaired intervals would be about +-3 points wide
    method = reference.copy()
    method[300:302] = 0
    result = paired_difference({0: method}, {0: reference})
    assert result.diff_points == pytest.approx(-0.2)
    assert result.ci_high - result.ci_low < 0.7
    assert result.verdict == "parity"


@pytest.mark.parametrize("low, high, expected", [
    (0.1, 2.0, "better"), (-0.9, 0.5, "parity"), (-1.0, -0.2, "parity"), (-3.0, -1.2, "worse"),
    (-2.0, 0.5, "inconclusive"), (-1.5, -0.9, "inconclusive"),
])
def test_verdict_rule(low, high, expected):
    assert verdict(low, high, margin=1.0) == expected


def test_correctness_round_trips_through_its_text_form():
    correct = [True, False, False, True]
    assert correctness_text(correct) == "1001"
    assert correctness_vector("1001").tolist() == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        correctness_vector("10a1")


def test_methods_scored_on_different_test_sets_are_refused():
    with pytest.raises(ValueError, match="different test sets"):
        paired_difference({0: np.ones(10)}, {0: np.ones(12)})
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: np.ones(10)}, {1: np.ones(10)})


@pytest.mark.parametrize("low, high, word, side", [
    (-1.57, -0.17, "INCONCLUSIVE", "behind LoRA"),  # the study's BBC interval: below 0, across -1
    (-0.8, 0.6, "PASS", None), (0.2, 1.4, "PASS", "ahead of LoRA"), (-3.0, -1.2, "NOT MET", "behind LoRA"),
])
def test_the_run_verdict_says_plainly_when_partial_lora_is_behind_lora(low, high, word, side):
    from partial_lora.commands.compare import _verdict
    from partial_lora.statistics import verdict as rule

    rows = [{"label": "lora r=8", "trainable_params": 100}, {"label": "partial-lora r=8 tau=0.9", "trainable_params": 20}]
    comparison = {"method": "partial-lora", "diff_points": (low + high) / 2, "ci_low": low, "ci_high": high,
                  "verdict": rule(low, high, margin=1.0), "examples": 1000, "seeds": [0, 1, 2]}
    text = _verdict(rows, [comparison], "accuracy")
    assert text.startswith(f"**{word}**")
    assert (side in text) if side else ("behind" not in text and "ahead" not in text)
