"""Evaluation metrics against plain loops."""
import pytest
import torch

from timm_icm.metrics import ClassificationMeter, expected_calibration_error


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
