"""Metrics against values worked out by hand (fake = positive = 1)."""

import math

import numpy as np
import pytest

from training.metrics import (
    binary_metrics,
    bootstrap_auc_interval,
    calibration_bins,
    choose_threshold,
    equal_error_rate,
    expected_calibration_error,
    fit_platt,
)

# scores sorted high to low: 0.8 (fake), 0.4 (real), 0.35 (fake), 0.1 (real)
Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


def test_threshold_metrics_by_hand():
    m = binary_metrics(Y, P, threshold=0.5)
    # predicted fake: only 0.8 -> TP 1, FP 0, FN 1, TN 2
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert (m["n"], m["n_real"], m["n_fake"]) == (4, 2, 2)


def test_threshold_is_inclusive():
    m = binary_metrics(Y, P, threshold=0.35)  # 0.35 counts as fake
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]


def test_ranking_metrics_by_hand():
    m = binary_metrics(Y, P)
    # pairs (fake, real) ranked correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4
    assert m["roc_auc"] == pytest.approx(0.75)
    # AP = sum over fakes of precision at its rank / n_fake = (1/1 + 2/3) / 2
    assert m["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    # at threshold 0.4: FPR = 1/2, FNR = 1/2
    assert m["eer"] == pytest.approx(0.5)


def test_eer_interpolates_between_roc_points():
    # 5 real, 5 fake; one real scores above two fakes
    y = [0, 0, 0, 0, 1, 0, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8]
    # ROC: at t=0.55 FPR 0, FNR 1/5; at t=0.5 FPR 1/5, FNR 1/5 -> crossing exactly at 0.2
    eer, threshold = equal_error_rate(y, p)
    assert eer == pytest.approx(0.2)
    assert 0.5 <= threshold <= 0.55


def test_perfect_separation():
    y = [0, 0, 0, 1, 1, 1]
    p = [0.05, 0.2, 0.3, 0.7, 0.9, 0.95]
    m = binary_metrics(y, p, choose_threshold(y, p, "youden"))
    assert m["roc_auc"] == 1.0 and m["average_precision"] == 1.0 and m["eer"] == 0.0
    assert m["accuracy"] == 1.0 and 0.3 < m["threshold"] <= 0.7


@pytest.mark.parametrize("method", ["youden", "eer", "f1"])
def test_threshold_methods_separate_shifted_scores(method):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    p = np.clip(np.concatenate([rng.normal(0.3, 0.1, 200), rng.normal(0.7, 0.1, 200)]), 0, 1)
    t = choose_threshold(y, p, method)
    assert 0.4 < t < 0.6
    assert binary_metrics(y, p, t)["accuracy"] > 0.9


def test_single_class_keeps_keys():
    m = binary_metrics([1, 1], [0.2, 0.9])
    assert math.isnan(m["roc_auc"]) and m["recall"] == 0.5
    assert choose_threshold([1, 1], [0.2, 0.9]) == 0.5


def test_unknown_threshold_method():
    with pytest.raises(ValueError):
        choose_threshold(Y, P, "median")


def test_eer_crossing_between_points():
    # ranked: fake 0.9, real 0.8, fake 0.7, real 0.2, real 0.1
    # (FPR, FNR) at t=0.8: (1/3, 1/2); at t=0.7: (1/3, 0) -> FNR falls through FPR = 1/3
    eer, threshold = equal_error_rate([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.2, 0.1])
    assert eer == pytest.approx(1 / 3)
    assert 0.7 <= threshold <= 0.8


def test_expected_calibration_error_by_hand():
    # bin [0.1, 0.2): predicted 0.1, observed 1/2 -> gap 0.4 on 2 images;
    # bin [0.9, 1.0]: predicted 0.9, observed 2/2 -> gap 0.1 on 2 images; ECE = (0.8 + 0.2) / 4
    y, p = [0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]
    assert expected_calibration_error(y, p) == pytest.approx(0.25)
    bins = calibration_bins(y, p)
    assert [b["n"] for b in bins] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0  # p = 1.0 falls in the last bin


def test_bootstrap_interval_brackets_the_auc_and_narrows_with_data():
    rng = np.random.default_rng(0)

    def sample(n):
        y = np.r_[np.zeros(n), np.ones(n)].astype(int)
        return y, np.r_[rng.normal(0, 1, n), rng.normal(1, 1, n)]

    small, large = sample(40), sample(400)
    low_s, high_s = bootstrap_auc_interval(*small, resamples=300)
    low_l, high_l = bootstrap_auc_interval(*large, resamples=300)
    from sklearn.metrics import roc_auc_score

    assert low_s < roc_auc_score(*small) < high_s and low_l < roc_auc_score(*large) < high_l
    assert high_l - low_l < (high_s - low_s) / 2  # about 1/sqrt(10) as wide
    assert all(math.isnan(v) for v in bootstrap_auc_interval([1, 1], [0.2, 0.3]))


def test_platt_fit_recovers_the_scale_and_shift_that_generated_the_labels():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, 20000)
    # labels drawn from P(fake) = sigmoid(0.5 * logit - 1): an over-confident, biased score
    y = (rng.random(len(logits)) < 1 / (1 + np.exp(-(0.5 * logits - 1)))).astype(int)
    scale, shift = fit_platt(logits, y)
    assert scale == pytest.approx(0.5, abs=0.03) and shift == pytest.approx(-1.0, abs=0.06)
    assert fit_platt([0.3, 1.2], [1, 1]) == (1.0, 0.0)  # one class: nothing to fit, identity


def test_calibration_changes_probabilities_not_rankings():
    import torch

    from runtime.weights import Calibration

    calibration = Calibration(scale=0.5, shift=-1.0)
    logits = np.array([-4.0, -1.0, 0.0, 2.0, 6.0])
    p = calibration.probability(logits)
    # 0.5 * logit - 1 = -3, -1.5, -1, 0, 2; sigmoid of those, from tables (e^-3 = 0.0497871, e^1.5 = 4.481689,
    # e = 2.7182818, e^-2 = 0.1353353): 1/(1 + e^3), 1/(1 + e^1.5), 1/(1 + e), 1/2, 1/(1 + e^-2)
    np.testing.assert_allclose(p, [0.0474259, 0.1824255, 0.2689414, 0.5, 0.8807971], atol=5e-8)
    assert p[3] == 0.5  # logit 2 is where scale * logit + shift crosses 0: exactly even odds
    # symmetric about that point: P(2 + d) + P(2 - d) = 1
    np.testing.assert_allclose(calibration.probability([2 + 3.0, 2 + 8.0]) + calibration.probability([2 - 3.0, 2 - 8.0]), 1.0)
    assert (np.diff(p) > 0).all()
    torch.testing.assert_close(calibration.probability(torch.tensor(logits)), torch.tensor(p))
    assert Calibration.from_metadata({}) == Calibration()  # older weights: the plain sigmoid
    assert Calibration.from_metadata({"calibration": calibration.to_metadata()}) == calibration
