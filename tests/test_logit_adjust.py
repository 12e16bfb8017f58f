"""Logit adjustment (Menon et al. 2021) against plain torch, wrapped around every loss of the package, and
the identity that makes ICM's class axis an implicit logit adjustment on unmixed batches."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

import train_icm
from timm_icm import InfiniteClassCrossEntropy, LogitAdjustedLoss, RegMixupLoss, cli, subsets
from timm_icm.factory import create_train_loss

COUNTS = torch.tensor([500., 120., 40., 9., 2.])


def batch(b=12, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, c, (b,), generator=g)
    return logits, labels


@pytest.mark.parametrize('tau', [1.0, 0.5, 2.0])
def test_hard_targets_equal_plain_cross_entropy_of_shifted_logits(tau):
    logits, labels = batch()
    logits.requires_grad_(True)
    got = LogitAdjustedLoss(nn.CrossEntropyLoss(), COUNTS, tau=tau)(logits, labels)
    shift = tau * torch.log(COUNTS.double() / COUNTS.sum())
    want = -torch.stack([(logits[i] + shift).log_softmax(0)[labels[i]] for i in range(len(labels))]).mean()
    assert torch.allclose(got.double(), want, atol=1e-6)
    g_got, = torch.autograd.grad(got, logits)
    g_want, = torch.autograd.grad(want, logits)
    assert torch.allclose(g_got, g_want, atol=1e-6)


def test_soft_targets_equal_plain_soft_cross_entropy_of_shifted_logits():
    logits, labels = batch()
    lam = 0.7
    target = lam * F.one_hot(labels, 5).double() + (1 - lam) * F.one_hot(labels.flip(0), 5).double()
    got = LogitAdjustedLoss(SoftTargetCrossEntropy(), COUNTS)(logits, target)
    shifted = logits + torch.log(COUNTS.double() / COUNTS.sum())
    want = -(target * shifted.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(got.double(), want, atol=1e-6)


def test_tau_zero_is_the_inner_loss():
    logits, labels = batch()
    assert torch.equal(LogitAdjustedLoss(nn.CrossEntropyLoss(), COUNTS, tau=0)(logits, labels),
                       nn.CrossEntropyLoss()(logits, labels))


@pytest.mark.parametrize('axes', ['both', 'class', 'pair'])
def test_wrapped_icm_equals_icm_on_shifted_logits(axes):
    logits, labels = batch(b=10)
    perm = torch.roll(torch.arange(10), 1)
    target = 0.6 * F.one_hot(labels, 5).double() + 0.4 * F.one_hot(labels[perm], 5).double()
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    icm = InfiniteClassCrossEntropy(axes=axes, target_format='dense')
    got = LogitAdjustedLoss(icm, COUNTS)(x1, target)
    want = icm(x2 + torch.log(COUNTS.double() / COUNTS.sum()), target)
    assert torch.allclose(got, want, atol=1e-6)
    got.backward()
    want.backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)


def test_wraps_regmixup_clean_and_mixed_rows():
    logits, labels = batch(b=8)
    target = torch.stack([F.one_hot(labels, 5).double(), F.one_hot(labels.flip(0), 5).double() * 0.5
                          + F.one_hot(labels, 5).double() * 0.5])
    both = torch.cat([logits, logits * 0.5])
    inner = RegMixupLoss(SoftTargetCrossEntropy(), weight=1.0)
    got = LogitAdjustedLoss(inner, COUNTS)(both, target)
    assert torch.allclose(got, inner(both + torch.log(COUNTS.double() / COUNTS.sum()), target))


def test_autocast_logits_give_a_float32_loss_and_no_bx_c_buffer_is_added():
    logits, labels = batch()
    loss = LogitAdjustedLoss(nn.CrossEntropyLoss(), COUNTS)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        value = loss(logits.bfloat16(), labels)
    assert value.dtype == torch.float32
    assert loss.log_prior.shape == (5,) and dict(loss.named_buffers()).keys() == {'log_prior'}
    assert 'log_prior' not in loss.state_dict()  # checkpoints stay those of the plain loss


def test_no_host_sync_on_meta_tensors():
    """Forward and backward run on the meta device, where any read of a value would fail."""
    loss = LogitAdjustedLoss(InfiniteClassCrossEntropy(target_format='dense'), COUNTS)
    logits = torch.randn(6, 5, device='meta', requires_grad=True)
    target = torch.rand(6, 5, device='meta')
    loss(logits, target).backward()
    assert logits.grad.shape == (6, 5)


@pytest.mark.parametrize('counts, message', [
    ([5, 0, 3], 'class 1 has no training images'),
    ([5, -1, 3], 'counts >= 0'),
    ([[1, 2]], '1-D'),
    ([], '1-D'),
    ([1.0, float('nan')], 'finite'),
])
def test_bad_counts_are_named(counts, message):
    with pytest.raises(ValueError, match=message):
        LogitAdjustedLoss(nn.CrossEntropyLoss(), counts)


@pytest.mark.parametrize('tau', [-1.0, float('inf'), float('nan'), True])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match='tau must be a finite number >= 0'):
        LogitAdjustedLoss(nn.CrossEntropyLoss(), COUNTS, tau=tau)


def test_wrong_number_of_classes_is_named():
    with pytest.raises(ValueError, match=r'logits of shape \(4, 3\) for a prior over 5 classes'):
        LogitAdjustedLoss(nn.CrossEntropyLoss(), COUNTS)(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- ICM as implicit LA (issue 9, 2b)

def batch_log_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log of the batch's class frequencies, -inf for classes absent from the batch."""
    freq = torch.bincount(labels, minlength=num_classes).double() / len(labels)
    return freq.log()


@pytest.mark.parametrize('seed', range(4))
def test_class_axis_on_an_unmixed_batch_is_logit_adjustment_by_the_batch_frequencies(seed):
    """-s_i[y_i] + log sum_j exp(s_i[y_j]) = CE(s_i + log p, y_i) + log p[y_i] + log B, p the batch's class
    frequencies: the same gradient; the values differ by mean_i log n[y_i], which has no gradient."""
    logits, labels = batch(b=16, c=5, seed=seed)
    labels[:9] = 0  # a long-tailed batch: class 0 nine times
    x_icm = logits.clone().requires_grad_(True)
    x_la = logits.clone().requires_grad_(True)
    icm = InfiniteClassCrossEntropy(axes='class', unmixed='icm', duplicates='paper', target_format='dense')
    got = icm(x_icm, F.one_hot(labels, 5).double())
    la = F.cross_entropy(x_la + batch_log_prior(labels, 5), labels)
    n = torch.bincount(labels, minlength=5).double()
    assert torch.allclose(got, la + n[labels].log().mean(), atol=1e-9)
    got.backward()
    la.backward()
    assert torch.allclose(x_icm.grad, x_la.grad, atol=1e-9)


def test_merge_switches_the_implicit_adjustment_off():
    """With duplicates='merge' the class axis is CE over the classes present, with no frequency term."""
    logits, labels = batch(b=16, c=5, seed=1)
    labels[:9] = 0
    x_icm = logits.clone().requires_grad_(True)
    x_ce = logits.clone().requires_grad_(True)
    icm = InfiniteClassCrossEntropy(axes='class', unmixed='icm', duplicates='merge', target_format='dense')
    icm(x_icm, F.one_hot(labels, 5).double()).backward()
    present = torch.where(torch.bincount(labels, minlength=5) > 0, 0.0, -math.inf).double()
    F.cross_entropy(x_ce + present, labels).backward()
    assert torch.allclose(x_icm.grad, x_ce.grad, atol=1e-9)
    # and it differs from the batch-frequency adjustment of 'paper'
    x_paper = logits.clone().requires_grad_(True)
    F.cross_entropy(x_paper + batch_log_prior(labels, 5), labels).backward()
    assert not torch.allclose(x_icm.grad, x_paper.grad, atol=1e-3)


# ----------------------------------------------------------------------------- train_icm.py

def test_train_icm_builds_the_prior_from_the_training_subset(fashion_mnist_dir):
    argv = ['-c', 'hparams/cpu/fmnist_resnet20.yaml', '-c', 'hparams/cpu/lt.yaml', '-c',
            'hparams/methods/icmixup_la.yaml', '--data-dir', fashion_mnist_dir, '--logit-adjust', '0.5']
    args, _ = cli.parse_args(argv)
    _, _, counts = train_icm.build_datasets(args)
    assert counts.tolist() == subsets.long_tailed_counts(10, 200, 0.01).tolist()
    loss = create_train_loss(args, counts)
    assert isinstance(loss, LogitAdjustedLoss) and isinstance(loss.loss, InfiniteClassCrossEntropy)
    assert loss.tau == 0.5
    assert torch.allclose(loss.log_prior, (counts.double() / counts.sum()).log().float())


@pytest.mark.parametrize('method, inner', [('la', nn.CrossEntropyLoss), ('mixup_la', SoftTargetCrossEntropy)])
def test_la_method_files(method, inner):
    args, _ = cli.parse_args(['-c', 'hparams/cpu/fmnist_resnet20.yaml', '-c', f'hparams/methods/{method}.yaml'])
    loss = create_train_loss(args, COUNTS.tolist()[:4] * 2 + [1, 1])
    assert isinstance(loss, LogitAdjustedLoss) and type(loss.loss) is inner and loss.tau == 1.0


@pytest.mark.parametrize('value', ['-1', 'nan', 'inf'])
def test_bad_logit_adjust_flag_is_one_line(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_icm.main(['--logit-adjust', value, '--data-dir', '.'])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--logit-adjust must be a finite number >= 0' in err[0], err
