"""Evaluation metrics against plain loops."""
import pytest
import torch

from timm_icm.metrics import ClassificationMeter, expected_calibration_error, fit_temperature, temperature_scaled_ece


def reference_ece(logits, target, num_bins=15):
    probs = logits.softmax(1)
    total = 0.
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        members = [i for i in range(len(target))
                   if lo <= probs[i].max() < hi or (b == num_bins - 1 and probs[i].max() == 1)]
        if members:
            accuracy = sum(float(probs[i].argmax() == target[i]) for i in members) / len(members)
            confidence = sum(float(probs[i].max()) for i in members) / len(members)
            total += len(members) / len(target) * abs(accuracy - confidence)
    return 100 * total


def test_ece_top1_top5_and_loss_over_several_batches():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 20, generator=g) * 3
    target = torch.randint(0, 20, (300,), generator=g)
    meter = ClassificationMeter()
    for part in range(3):
        rows = slice(100 * part, 100 * part + 100)
        meter.update(logits[rows], target[rows], torch.nn.functional.cross_entropy(logits[rows], target[rows]))
    metrics = meter.compute()
    assert metrics['ece'] == pytest.approx(reference_ece(logits, target), rel=1e-9)
    assert metrics['top1'] == pytest.approx(100 * (logits.argmax(1) == target).double().mean().item())
    top5 = sum(int(target[i] in logits[i].topk(5).indices) for i in range(300)) / 3
    assert metrics['top5'] == pytest.approx(top5)
    assert metrics['loss'] == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)


def test_perfectly_calibrated_and_overconfident():
    target = torch.arange(4)
    confident_right = torch.eye(4) * 100
    assert expected_calibration_error(confident_right, target) == pytest.approx(0., abs=1e-6)
    confident_wrong = torch.eye(4)[[1, 2, 3, 0]] * 100
    assert expected_calibration_error(confident_wrong, target) == pytest.approx(100., abs=1e-6)


def nll(logits, target, temperature):
    return torch.nn.functional.cross_entropy(logits.double() / temperature, target).item()


def test_fitted_temperature_minimises_the_nll():
    """Against a plain grid search; and on labels drawn from softmax(z), logits 3z give back T = 3."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 10, generator=g) * 2
    target = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    fitted = fit_temperature(3 * z, target)
    assert fitted == pytest.approx(3, rel=0.05)
    grid = torch.linspace(2, 4, 2001)
    best = grid[torch.tensor([nll(3 * z, target, t) for t in grid.tolist()]).argmin()].item()
    assert fitted == pytest.approx(best, abs=2e-3)
    assert nll(3 * z, target, fitted) <= nll(3 * z, target, best) + 1e-12


def test_temperature_scaled_ece_fits_on_one_half_and_measures_on_the_other():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2000, 10, generator=g) * 2
    target = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    overconfident = 4 * z
    result = temperature_scaled_ece(overconfident, target)
    even, odd = slice(0, None, 2), slice(1, None, 2)
    t_even, t_odd = fit_temperature(overconfident[even], target[even]), fit_temperature(overconfident[odd], target[odd])
    expected = (reference_ece(overconfident[odd].double() / t_even, target[odd])
                + reference_ece(overconfident[even].double() / t_odd, target[even])) / 2
    assert result['ece'] == pytest.approx(reference_ece(overconfident, target), rel=1e-9)
    assert result['ece_scaled'] == pytest.approx(expected, rel=1e-9)
    assert result['temperature'] == pytest.approx((t_even + t_odd) / 2)
    assert result['ece'] > 10 and result['ece_scaled'] < 5 and result['temperature'] > 3
