"""Evaluation metrics: top-k accuracy and expected calibration error, reducible across processes."""
from typing import Dict

import torch


class ClassificationMeter:
    """Accumulates loss, top-1, top-5 and the calibration bins over batches; ``compute()`` gives the means.

    All state is kept as one tensor of sums, so a distributed run reduces it with a single all-reduce.
    ECE (Guo et al. 2017, 15 equal-width confidence bins): sum over bins of
    ``|bin accuracy - bin confidence| * bin size / N``.
    """

    def __init__(self, num_bins: int = 15, device: torch.device = torch.device('cpu')):
        self.num_bins = num_bins
        self.sums = torch.zeros(4 + 2 * num_bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        logits = logits.float()
        n = target.shape[0]
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == target[:, None]
        confidence, prediction = logits.softmax(dim=1).max(dim=1)
        correct = (prediction == target).double()
        bins = (confidence.double() * self.num_bins).long().clamp_(max=self.num_bins - 1)
        nb = self.num_bins
        self.sums[0] += loss.double() * n
        self.sums[1] += hits[:, 0].sum()
        self.sums[2] += hits.any(dim=1).sum()
        self.sums[3] += n
        self.sums[4:4 + nb] += torch.bincount(bins, weights=confidence.double(), minlength=nb)
        self.sums[4 + nb:] += torch.bincount(bins, weights=correct, minlength=nb)

    def compute(self) -> Dict[str, float]:
        s, nb = self.sums.cpu(), self.num_bins
        n = s[3].clamp(min=1)
        conf, acc = s[4:4 + nb], s[4 + nb:]
        ece = (acc - conf).abs().sum() / n
        return {'loss': float(s[0] / n), 'top1': float(100 * s[1] / n), 'top5': float(100 * s[2] / n),
                'ece': float(100 * ece)}


def expected_calibration_error(logits: torch.Tensor, target: torch.Tensor, num_bins: int = 15) -> float:
    """ECE in percent of one set of logits (see :class:`ClassificationMeter`)."""
    meter = ClassificationMeter(num_bins, logits.device)
    meter.update(logits, target, torch.zeros(()))
    return meter.compute()['ece']


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, max_steps: int = 100) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 that minimises the NLL of ``softmax(logits / T)``.

    The NLL is convex in the inverse temperature ``b = 1 / T`` (a log-sum-exp of ``b z`` less ``b z_y``), with
    derivative ``mean(E_p[z] - z_y)`` and second derivative ``mean(Var_p[z])``: Newton's method on ``b`` from 1.
    """
    z = logits.double()
    z_target = z.gather(1, target[:, None]).squeeze(1)
    inverse = 1.0
    for _ in range(max_steps):
        p = (inverse * z).softmax(dim=1)
        mean = (p * z).sum(dim=1)
        slope = (mean - z_target).mean().item()
        curvature = ((p * z * z).sum(dim=1) - mean * mean).mean().item()
        if curvature <= 1e-12:  # every image already certain: no finite optimum beyond this
            break
        step = slope / curvature
        inverse = inverse - step if inverse - step > 0 else inverse / 2
        if abs(step) < 1e-9 * inverse:
            break
    return 1.0 / inverse


def temperature_scaled_ece(logits: torch.Tensor, target: torch.Tensor, num_bins: int = 15) -> Dict[str, float]:
    """ECE before and after temperature scaling, the temperature fitted on one half of the images and measured
    on the other, then the halves swapped (even and odd indices): ``ece``, ``ece_scaled`` (the mean of the two
    halves' ECE) and ``temperature`` (the mean of the two fitted temperatures), in percent and units."""
    halves = (torch.arange(0, len(target), 2), torch.arange(1, len(target), 2))
    scaled, temperatures = [], []
    for fit, measure in (halves, halves[::-1]):
        temperature = fit_temperature(logits[fit], target[fit])
        temperatures.append(temperature)
        scaled.append(expected_calibration_error(logits[measure].double() / temperature, target[measure], num_bins))
    return {'ece': expected_calibration_error(logits, target, num_bins), 'ece_scaled': sum(scaled) / 2,
            'temperature': sum(temperatures) / 2}
