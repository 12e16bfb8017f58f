"""InfiniteClassCrossEntropy against plain-torch references and the paper's closed forms."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from timm_icm import InfiniteClassCrossEntropy, infinite_class_cross_entropy
import timm_icm.loss as icm_loss
import timm_icm.loss_fast as loss_fast
from timm_icm.loss import any_row_mixed, duplicate_counts
from timm_icm.loss_fast import MixedTargets, cross_entropies

B, C, D = 12, 7, 5


def mixed_targets(batch_size=B, num_classes=C, seed=0, smoothing=0.1, mode='elem', alpha=0.4):
    np.random.seed(seed)
    labels = torch.randint(0, num_classes, (batch_size,), generator=torch.Generator().manual_seed(seed))
    mixer = Mixup(mixup_alpha=alpha, mode=mode, label_smoothing=smoothing, num_classes=num_classes)
    _, target = mixer(torch.zeros(batch_size, 1, 2, 2), labels)
    return target.double()


def reference_loss(logits, target, axes, distinct_class_axis=False):
    """Eq. 5 / 7 / 9 written out with loops over images and interpolated classifiers."""
    n = len(logits)
    score = [[sum(float(logits[i, c]) * float(target[j, c]) for c in range(logits.shape[1]))
              for j in range(n)] for i in range(n)]
    total = 0.
    if axes in ('class', 'both'):
        for i in range(n):
            columns = range(n)
            if distinct_class_axis:  # one classifier per distinct target row
                columns = [j for j in range(n) if not any(torch.equal(target[j], target[k]) for k in range(j))]
            z_cc = sum(math.exp(score[i][j]) for j in columns)
            total -= (score[i][i] - math.log(z_cc)) / n
    if axes in ('pair', 'both'):
        for i in range(n):
            z_ci = sum(math.exp(score[j][i]) for j in range(n))
            total -= (score[i][i] - math.log(z_ci)) / n
    return total


@pytest.mark.parametrize('axes', ['both', 'class', 'pair'])
def test_matches_loop_reference(axes):
    target = mixed_targets()
    logits = torch.randn(B, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = InfiniteClassCrossEntropy(axes=axes)(logits, target)
    assert loss.item() == pytest.approx(reference_loss(logits, target, axes), rel=1e-10)


def test_both_is_class_plus_pair():
    target = mixed_targets(seed=3)
    logits = torch.randn(B, C, dtype=torch.float64)
    both = infinite_class_cross_entropy(logits, target, 'both')
    parts = infinite_class_cross_entropy(logits, target, 'class') + infinite_class_cross_entropy(logits, target, 'pair')
    torch.testing.assert_close(both, parts)


def test_bias_is_interpolated_with_the_classifier():
    """Eq. 2-3 for a head with bias: image i under row j's classifier W y_j with bias b . y_j."""
    g = torch.Generator().manual_seed(2)
    feats, weight, bias = (torch.randn(B, D, generator=g, dtype=torch.float64),
                           torch.randn(C, D, generator=g, dtype=torch.float64),
                           torch.randn(C, generator=g, dtype=torch.float64))
    target = mixed_targets(seed=4)
    interpolated_w, interpolated_b = target @ weight, target @ bias  # one classifier per row
    scores = feats @ interpolated_w.T + interpolated_b[None, :]
    expected = F.cross_entropy(scores, torch.arange(B)) + F.cross_entropy(scores.T, torch.arange(B))
    loss = InfiniteClassCrossEntropy()(F.linear(feats, weight, bias), target)
    torch.testing.assert_close(loss, expected)


def closed_form_gradients(feats, weight, target):
    """Eq. 6 and Eq. 8 (appendix A.2): gradients of the log-likelihoods w.r.t. W, W in R^{D x C}."""
    n, num_classes = target.shape
    score = feats @ weight @ target.T
    p_cc = torch.softmax(score, dim=1)  # p_cc[i, j] = p_cc(C_yj | x_i)
    p_ci = torch.softmax(score, dim=0)  # p_ci[j, i] = p_ci(C_yi | x_j)
    eq6 = torch.zeros_like(weight)
    eq8 = torch.zeros_like(weight)
    for c in range(num_classes):
        for i in range(n):
            expected_y = sum(p_cc[i, j] * target[j, c] for j in range(n))
            eq6[:, c] += feats[i] * (target[i, c] - expected_y)
            expected_r = sum(p_ci[j, i] * feats[j] for j in range(n))
            eq8[:, c] += target[i, c] * (feats[i] - expected_r)
    return eq6, eq8


@pytest.mark.parametrize('axes', ['both', 'class', 'pair'])
def test_gradient_matches_eq6_and_eq8(axes):
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(B, D, generator=g, dtype=torch.float64)
    weight = torch.randn(D, C, generator=g, dtype=torch.float64, requires_grad=True)
    target = mixed_targets(seed=6)
    InfiniteClassCrossEntropy(axes=axes)(feats @ weight, target).backward()
    eq6, eq8 = closed_form_gradients(feats, weight.detach(), target)
    # The loss is the negative mean log-likelihood: its gradient is -(1/B) times the paper's.
    expected = {'class': eq6, 'pair': eq8, 'both': eq6 + eq8}[axes] * (-1. / B)
    torch.testing.assert_close(weight.grad, expected)


@pytest.mark.parametrize('scale', [1e4, 1e30])
def test_finite_for_huge_logits(scale):
    target = mixed_targets(seed=7).float()
    logits = (torch.randn(B, C) * scale).requires_grad_()
    loss = InfiniteClassCrossEntropy()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss.item() > 0


def test_bf16_autocast_computes_in_float32():
    torch.manual_seed(0)
    head = torch.nn.Linear(D, C)
    feats = torch.randn(B, D)
    target = mixed_targets(seed=8).float()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = head(feats)
        loss = InfiniteClassCrossEntropy()(logits, target)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    # Exactly the float32 loss of the same bf16 logits: no bf16 matmul or softmax inside.
    assert loss.item() == InfiniteClassCrossEntropy()(logits.float(), target).item()
    assert loss.item() == pytest.approx(InfiniteClassCrossEntropy()(head(feats), target).item(), rel=2e-2)


def test_merge_normalises_class_axis_over_distinct_rows():
    target = mixed_targets(seed=9)
    target[5] = target[2]
    target[9] = target[2]
    target[7] = target[0]
    logits = torch.randn(B, C, dtype=torch.float64)
    merged = infinite_class_cross_entropy(logits, target, 'class', 'merge')
    paper = infinite_class_cross_entropy(logits, target, 'class', 'paper')
    assert merged.item() == pytest.approx(reference_loss(logits, target, 'class', distinct_class_axis=True))
    assert paper.item() == pytest.approx(reference_loss(logits, target, 'class'))
    assert merged.item() < paper.item()  # duplicates no longer inflate the normaliser
    # The pair axis is untouched by the option.
    torch.testing.assert_close(infinite_class_cross_entropy(logits, target, 'pair', 'merge'),
                               infinite_class_cross_entropy(logits, target, 'pair', 'paper'))


def test_merge_equals_paper_without_duplicates():
    target = mixed_targets(seed=1)
    assert duplicate_counts(target).max() == 1  # no same-class pair in this draw
    logits = torch.randn(B, C, dtype=torch.float64)
    torch.testing.assert_close(infinite_class_cross_entropy(logits, target, 'both', 'merge'),
                               infinite_class_cross_entropy(logits, target, 'both', 'paper'))


def test_duplicate_counts():
    target = torch.eye(4)[[0, 1, 0, 2, 0, 1]] * 0.9 + 0.025
    assert duplicate_counts(target).tolist() == [3, 2, 3, 1, 3, 2]
    target[3, 0] = torch.nextafter(target[3, 0], torch.tensor(1.))  # one ulp apart is another row
    assert duplicate_counts(target)[3].item() == 1


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_unmixed_ce_falls_back_to_soft_target_ce(smoothing):
    labels = torch.randint(0, C, (B,))
    mixer = Mixup(mixup_alpha=0.2, label_smoothing=smoothing, num_classes=C)
    mixer.mixup_enabled = False  # what timm's train loop does past --mixup-off-epoch
    _, target = mixer(torch.zeros(B, 1, 2, 2), labels)
    assert not any_row_mixed(target)
    logits = torch.randn(B, C, requires_grad=True)
    loss = InfiniteClassCrossEntropy(unmixed='ce')(logits, target)
    expected = SoftTargetCrossEntropy()(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, logits)[0])


def test_mixed_batch_does_not_fall_back():
    target = mixed_targets(seed=11).float()
    assert any_row_mixed(target)
    logits = torch.randn(B, C)
    assert InfiniteClassCrossEntropy()(logits, target).item() == pytest.approx(
        reference_loss(logits.double(), target.double(), 'both'), rel=1e-5)


def test_one_mixed_row_is_enough_to_contrast():
    target = mixed_targets(seed=12, smoothing=0.0, alpha=0.0001)
    target = torch.eye(C, dtype=torch.float64)[target.argmax(1)]
    target[3] = 0.
    target[3, 0], target[3, 1] = 0.7, 0.3
    assert any_row_mixed(target)
    logits = torch.randn(B, C, dtype=torch.float64)
    assert InfiniteClassCrossEntropy()(logits, target).item() == pytest.approx(reference_loss(logits, target, 'both'))


def test_batch_of_one_falls_back():
    target = mixed_targets(batch_size=2, seed=13)[:1]
    logits = torch.randn(1, C, dtype=torch.float64)
    assert InfiniteClassCrossEntropy()(logits, target).item() == pytest.approx(
        SoftTargetCrossEntropy()(logits, target).item(), rel=1e-12)


def test_no_value_is_read_on_the_host():
    """Meta tensors have no values: any .item(), bool() or data-dependent shape would raise here."""
    logits = torch.empty(B, C, device='meta', requires_grad=True)
    target = torch.empty(B, C, device='meta')
    for axes in ('both', 'class', 'pair'):
        for duplicates in ('paper', 'merge'):
            for target_format, unmixed in (('dense', 'ce'), ('sparse', 'ce'), ('sparse', 'icm')):
                loss = infinite_class_cross_entropy(logits, target, axes, duplicates, target_format, unmixed)
                loss.backward()
                assert loss.shape == () and logits.grad.shape == (B, C)


@pytest.mark.parametrize('logits, target, error, words', [
    (torch.randn(4, C), torch.randint(0, C, (4,)), TypeError, ['soft targets of shape [B, C]', 'torch.int64', '(4,)']),
    (torch.randn(4, C), torch.rand(6, C), ValueError, ['same shape', '(4, 7)', '(6, 7)']),
    (torch.randn(4, C), torch.rand(4, C + 1), ValueError, ['same shape', '(4, 8)']),
    (torch.randn(4, C), torch.rand(4 * C), ValueError, ['[B, C]', f'({4 * C},)']),
    (torch.randn(8, C), torch.rand(2, 4, C), ValueError, ['RegMixupLoss', '(2, 4, 7)']),
    (torch.randn(4, C, 1), torch.rand(4, C), ValueError, ['logits of shape [B, C]', '(4, 7, 1)']),
    (torch.randint(0, 3, (4, C)), torch.rand(4, C), ValueError, ['float logits', 'torch.int64']),
    ([[0.0] * C] * 4, torch.rand(4, C), TypeError, ['two tensors', 'list']),
])
def test_bad_inputs_say_what_was_expected_and_what_arrived(logits, target, error, words):
    with pytest.raises(error) as info:
        InfiniteClassCrossEntropy()(logits, target)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize('kwargs, words', [
    ({'axes': 'rows'}, ["axes must be one of 'both', 'class', 'pair'", "'rows'"]),
    ({'duplicates': 'dedupe'}, ["duplicates must be one of 'paper', 'merge'", "'dedupe'"]),
])
def test_unknown_options(kwargs, words):
    with pytest.raises(ValueError) as info:
        InfiniteClassCrossEntropy(**kwargs)
    for word in words:
        assert word in str(info.value)


SPARSE_CASES = {  # timm mixer arguments whose targets the sparse path must reproduce exactly
    'mixup-elem-smooth': dict(mixup_alpha=0.4, mode='elem', label_smoothing=0.1),
    'mixup-batch': dict(mixup_alpha=0.2, mode='batch', label_smoothing=0.0),
    'cutmix-pair': dict(mixup_alpha=0., cutmix_alpha=1.0, mode='pair', label_smoothing=0.1),
    'switch-prob-elem': dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, mode='elem', label_smoothing=0.1),
    'unmixed': dict(mixup_alpha=0.2, prob=0.0, label_smoothing=0.1),
}


@pytest.mark.parametrize('num_classes', [80, 10], ids=['C>=2B-columns', 'C<2B-rows'])
@pytest.mark.parametrize('duplicates', ['paper', 'merge'])
@pytest.mark.parametrize('axes', ['both', 'class', 'pair'])
@pytest.mark.parametrize('case', SPARSE_CASES)
def test_sparse_path_equals_dense_path(case, axes, duplicates, num_classes):
    np.random.seed(0)
    labels = torch.randint(0, num_classes, (32,), generator=torch.Generator().manual_seed(1))
    labels[5] = labels[26]  # a same-class pair: duplicate targets
    _, target = Mixup(num_classes=num_classes, **SPARSE_CASES[case])(torch.zeros(32, 1, 2, 2), labels)
    logits = torch.randn(32, num_classes, dtype=torch.float64, requires_grad=True)
    losses, grads = [], []
    for target_format in ('dense', 'sparse'):
        loss = infinite_class_cross_entropy(logits, target.double(), axes, duplicates, target_format)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, logits)[0])
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(grads[1], grads[0])


def teacher_targets(seed=19, batch_size=B, num_classes=C):
    """Soft targets no timm mixer makes (every class above the row's minimum), e.g. a teacher's."""
    logits = torch.randn(batch_size, num_classes, generator=torch.Generator().manual_seed(seed))
    return torch.softmax(logits, dim=1)


def test_sparse_path_raises_for_targets_it_cannot_represent():
    target = mixed_targets(seed=20).float()
    target[[4, 9]] = teacher_targets()[[4, 9]]
    with pytest.raises(ValueError) as info:
        infinite_class_cross_entropy(torch.randn(B, C), target, target_format='sparse')
    for words in ("target_format='sparse'", f'2 of {B} rows have three or more classes above their minimum',
                  f'(row 4: {C - 1} classes)', "pass target_format='dense'"):
        assert words in str(info.value)


def test_sparse_path_asserts_on_the_device_without_a_host_read(monkeypatch):
    """Where a host read would sync (accelerators), a device-side assertion; on the CPU it raises at once."""
    monkeypatch.setattr(loss_fast, 'host_reads_are_free', lambda device: False)
    loss = InfiniteClassCrossEntropy(target_format='sparse')
    torch.testing.assert_close(loss(torch.ones(B, C), mixed_targets(seed=20).float()), torch.tensor(2 * math.log(B)))
    with pytest.raises(RuntimeError, match="reached the sparse score path, which cannot represent them; "
                                           "pass target_format='dense'"):
        loss(torch.randn(B, C), teacher_targets())


def sparse_path_choice(loss, logits, target):
    """The path ``loss`` takes for this call: 'sparse' where it reads the targets' structure."""
    classifiers = loss.score_path.classifiers(len(logits), target)
    return 'sparse' if isinstance(classifiers, MixedTargets) else 'dense'


def test_auto_format_checks_the_targets_once_and_picks_the_path_by_size(monkeypatch):
    mixed = mixed_targets(seed=14).float()
    teacher = teacher_targets()
    logits = torch.randn(B, C)
    dense = {name: infinite_class_cross_entropy(logits, t, target_format='dense') for name, t in
             (('mixed', mixed), ('teacher', teacher))}
    auto, auto_dense = InfiniteClassCrossEntropy(), InfiniteClassCrossEntropy()
    assert auto.sparse_targets is None
    torch.testing.assert_close(auto(logits, mixed), dense['mixed'])
    torch.testing.assert_close(auto_dense(logits, teacher), dense['teacher'])
    assert auto.sparse_targets is True and auto_dense.sparse_targets is False
    # A batch this small is cheaper as one matrix product, whatever the targets.
    assert sparse_path_choice(auto, logits, mixed) == 'dense'
    torch.testing.assert_close(auto(logits, teacher), dense['teacher'])
    # Large enough, the sparse path; the choice about the targets stays: a later batch that does not
    # fit the sparse structure fails there, loudly, never with a wrong or NaN loss.
    monkeypatch.setitem(loss_fast.DENSE_SCORE_WORK, 'cpu', B * B * C - 1)
    assert sparse_path_choice(auto, logits, mixed) == 'sparse'
    assert sparse_path_choice(auto_dense, logits, mixed) == 'dense'
    torch.testing.assert_close(auto(logits, mixed), dense['mixed'])
    with pytest.raises(ValueError, match="target_format='auto', which found the first batch's targets mixed by timm"):
        auto(logits, teacher)
    torch.testing.assert_close(auto_dense(logits, mixed), dense['mixed'])


def test_auto_format_reads_the_first_batch_once_in_a_pre_hook_that_then_leaves():
    mixed, logits = mixed_targets(seed=14).float(), torch.randn(B, C)
    auto = InfiniteClassCrossEntropy()
    twin = copy.deepcopy(auto)  # a copy taken before the first call reads its own first batch
    assert len(auto._forward_pre_hooks) == 1
    auto(logits, mixed)
    assert auto.sparse_targets is True and not auto._forward_pre_hooks
    assert twin.sparse_targets is None and len(twin._forward_pre_hooks) == 1
    twin(logits, teacher_targets())
    assert twin.sparse_targets is False and not twin._forward_pre_hooks
    direct = InfiniteClassCrossEntropy()  # forward called without the module call (and its hooks)
    torch.testing.assert_close(direct.forward(logits, mixed), auto(logits, mixed))
    assert direct.sparse_targets is True
    assert not InfiniteClassCrossEntropy(target_format='dense')._forward_pre_hooks


def test_sparse_pays_off_for_large_b2c_only():
    cpu, accelerator = torch.device('cpu'), torch.device('meta')
    assert not loss_fast.sparse_pays_off(128, 128, 100, cpu)
    assert loss_fast.sparse_pays_off(1024, 1024, 1000, cpu)
    assert not loss_fast.sparse_pays_off(1024, 1024, 1000, accelerator)
    assert loss_fast.sparse_pays_off(1024, 1024, 21843, accelerator)


@pytest.mark.parametrize('target_format', ['dense', 'sparse'])
@pytest.mark.parametrize('unmixed', ['icm', 'ce'])
@pytest.mark.parametrize('where', ['logits', 'target'])
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_nan_and_inf_in_the_inputs_propagate_as_in_soft_target_ce(target_format, unmixed, where, bad):
    """A NaN or inf in a batch reaches the loss (no exception, no silent finite value), as timm's
    SoftTargetCrossEntropy lets it: the training loop's own checks then see it."""
    logits, target = torch.randn(B, C), mixed_targets(seed=21).float()
    {'logits': logits, 'target': target}[where][5, 3] = bad
    expected = SoftTargetCrossEntropy()(logits, target)
    assert not torch.isfinite(expected)
    loss = infinite_class_cross_entropy(logits, target, target_format=target_format, unmixed=unmixed)
    assert not torch.isfinite(loss)


@pytest.mark.parametrize('num_classes', [50, 10])
@pytest.mark.parametrize('axes', ['both', 'class', 'pair'])
def test_gathered_rows_sparse_equals_dense(axes, num_classes):
    """A process's rows [8:16) of a global batch of 32, as --icm-gather computes them."""
    np.random.seed(1)
    _, target = Mixup(mixup_alpha=0.5, mode='elem', label_smoothing=0.1, num_classes=num_classes)(
        torch.zeros(32, 1, 2, 2), torch.randint(0, num_classes, (32,)))
    logits = torch.randn(32, num_classes, dtype=torch.float64, requires_grad=True)
    results = []
    for target_format in ('dense', 'sparse'):
        loss = infinite_class_cross_entropy(logits[8:16], target[8:16].double(), axes, 'paper', target_format,
                                            all_logits=logits, all_target=target.double(), offset=8)
        results.append((loss, torch.autograd.grad(loss, logits)[0]))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def reference_softmax_nll(scores, dim, offset, bias=None):
    """Plain-autograd logsumexp minus the positive of each line (line k's positive at offset + k)."""
    shifted = scores if bias is None else scores - bias.unsqueeze(1 - dim)
    lines = torch.arange(scores.shape[1 - dim])
    positive = scores[lines + offset, lines] if dim == 0 else scores[lines, lines + offset]
    return torch.logsumexp(shifted, dim) - positive


@pytest.mark.parametrize('case, row_shape, column_shape, offset', [
    ('shared', (9, 9), None, 0), ('rows', (9, 9), None, 0), ('columns', None, (9, 9), 0),
    ('gathered', (5, 12), (12, 5), 7), ('rows', (5, 12), None, 4), ('columns', None, (12, 5), 4)])
@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('layout', ['contiguous', 'transposed view'])
def test_cross_entropies_values_and_gradients_match_autograd(case, row_shape, column_shape, offset, with_bias,
                                                               layout):
    """Both terms against plain autograd, for one shared matrix or two (gathered), each laid out
    either way in memory (the sparse path gives a transposed view), a bias on the class axis."""
    gen = torch.Generator().manual_seed(15)

    def scores(shape):
        if layout == 'contiguous':
            return (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).requires_grad_()
        return (torch.randn(shape[::-1], generator=gen, dtype=torch.float64) * 3).t().detach().requires_grad_()

    rows = scores(row_shape) if row_shape else None
    columns = rows if case == 'shared' else scores(column_shape) if column_shape else None
    bias = torch.rand(row_shape[1], generator=gen, dtype=torch.float64) if with_bias and rows is not None else None
    grads_in = [torch.rand((), generator=gen, dtype=torch.float64) + 0.5 for _ in range(2)]
    axes = 'class' if columns is None else 'pair' if rows is None else 'both'
    class_ce, pair_ce = cross_entropies(rows, columns, axes, offset, bias)
    assert (class_ce is None) == (rows is None) and (pair_ce is None) == (columns is None)
    ours = [t for t in (class_ce, pair_ce) if t is not None]
    expected = [reference_softmax_nll(m, dim, offset, b).mean() for m, dim, b in
                ((rows, 1, bias), (columns, 0, None)) if m is not None]
    inputs = list({id(m): m for m in (rows, columns) if m is not None}.values())
    for value, reference in zip(ours, expected):
        torch.testing.assert_close(value, reference)

    def grads(outputs, **kwargs):
        return torch.autograd.grad(outputs, inputs, grads_in[:len(outputs)], **kwargs)

    got = grads(ours, retain_graph=True)
    for grad, reference in zip(got, grads(expected)):
        torch.testing.assert_close(grad, reference)
    # The kept softmaxes are not consumed: a second backward through the same graph gives the same.
    for grad, again in zip(got, grads(ours)):
        torch.testing.assert_close(again, grad)


def test_sparse_score_matrix_is_the_product_in_both_layouts():
    for num_classes in (80, 10):  # C >= 2B gathers columns; C < 2B sums rows of the transpose
        target = mixed_targets(batch_size=32, num_classes=num_classes, seed=22)
        logits = torch.randn(20, num_classes, dtype=torch.float64, requires_grad=True)
        sparse = loss_fast.sparse_score_matrix(logits, MixedTargets.read(target))
        torch.testing.assert_close(sparse, logits @ target.T)
        weights = torch.randn(20, 32, dtype=torch.float64)
        torch.testing.assert_close(torch.autograd.grad((sparse * weights).sum(), logits)[0], weights @ target)


def test_loss_is_exact_where_the_positive_softmax_underflows():
    """Losses of hundreds of nats: the positive's softmax is 0 in float32, the loss must not be inf."""
    target = mixed_targets(seed=16).float()
    logits = torch.randn(B, C, generator=torch.Generator().manual_seed(16)) * 300
    loss = InfiniteClassCrossEntropy()(logits, target).item()
    scores = logits.double() @ target.double().T
    diagonal = scores.diagonal()
    expected = (scores.logsumexp(1) - diagonal).mean() + (scores.logsumexp(0) - diagonal).mean()
    assert loss > 100
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def unmixed_targets(smoothing=0.1, batch_size=B, num_classes=C):
    labels = torch.randint(0, num_classes, (batch_size,), generator=torch.Generator().manual_seed(17))
    mixer = Mixup(mixup_alpha=0.2, label_smoothing=smoothing, num_classes=num_classes)
    mixer.mixup_enabled = False
    return mixer(torch.zeros(batch_size, 1, 2, 2), labels)[1].double()


@pytest.mark.parametrize('target_format', ['dense', 'sparse'])
def test_unmixed_icm_contrasts_an_unmixed_batch(target_format):
    target = unmixed_targets()
    logits = torch.randn(B, C, dtype=torch.float64)
    loss = infinite_class_cross_entropy(logits, target, target_format=target_format)  # unmixed='icm' by default
    assert loss.item() == pytest.approx(reference_loss(logits, target, 'both'), rel=1e-10)
    assert loss.item() != pytest.approx(SoftTargetCrossEntropy()(logits, target).item(), rel=1e-3)


@pytest.mark.parametrize('target_format', ['dense', 'sparse'])
@pytest.mark.parametrize('unmixed', ['ce', 'icm'])
@pytest.mark.parametrize('batch', ['mixed', 'unmixed', 'not-sparse'])
def test_device_path_equals_host_path(monkeypatch, target_format, unmixed, batch):
    """Accelerators compute both branches and select on the device; the CPU reads the flag and
    computes one. Same values and gradients; targets the sparse path cannot represent fail on both."""
    target = {'mixed': lambda: mixed_targets(seed=18), 'unmixed': unmixed_targets,
              'not-sparse': lambda: teacher_targets().double()}[batch]()
    logits = torch.randn(B, C, dtype=torch.float64, requires_grad=True)
    results = []
    for host in (True, False):
        for module in (icm_loss, loss_fast):
            monkeypatch.setattr(module, 'host_reads_are_free', lambda device: host)
        if batch == 'not-sparse' and target_format == 'sparse':  # fails on either path, never NaN
            with pytest.raises(ValueError if host else RuntimeError, match="target_format='dense'"):
                infinite_class_cross_entropy(logits, target, target_format=target_format, unmixed=unmixed)
            continue
        loss = infinite_class_cross_entropy(logits, target, target_format=target_format, unmixed=unmixed)
        results.append((loss, torch.autograd.grad(loss, logits)[0]))
    if results:
        torch.testing.assert_close(results[0][0], results[1][0])
        torch.testing.assert_close(results[0][1], results[1][1])


def test_unknown_unmixed_option():
    with pytest.raises(ValueError, match="unmixed must be one of 'ce', 'icm'; got 'skip'"):
        InfiniteClassCrossEntropy(unmixed='skip')
