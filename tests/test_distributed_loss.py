"""gather_distributed=True on gloo with 2 and 4 CPU processes: the loss of the global batch, exact.

The DDP contract: the mean over ranks of the per-rank losses is the single-process loss of the
concatenated global batch, and each rank's logits gradient is world_size times the global loss's
gradient for its rows. Checked against a float64 reference written from Eq. 5/7/9 for every option,
with one spawn per world size: each process runs every case in one process group.
"""
import csv
import itertools
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.data import Mixup

from timm_icm import InfiniteClassCrossEntropy, LogitAdjustedLoss, RegMixupLoss
import timm_icm.loss_fast as loss_fast
from timm_icm.loss import _GatheringLogits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 16  # the global batch: 8 rows a rank on 2 processes, 4 on 4
TARGETS = {  # name: (classes, how the global batch's targets are made)
    'mixup': (50, dict(mixup_alpha=0.4, mode='elem', label_smoothing=0.1)),  # C >= 2N: the sparse path's columns
    'cutmix': (10, dict(mixup_alpha=0., cutmix_alpha=1.0, mode='pair', label_smoothing=0.1)),  # C < 2N: its rows
    'unmixed': (10, dict(mixup_alpha=0.2, prob=0., label_smoothing=0.1)),
    'teacher': (7, None),  # arbitrary soft targets: the dense path only
}
FORMATS = ('dense', 'sparse', 'auto', 'auto-sparse')  # auto-sparse: 'auto' made to take the sparse path at this size
CLASS_COUNTS = [5, 1, 30, 2, 9, 4, 7]


def make_targets(kind, seed, batch_size=N):
    num_classes, mixing = TARGETS[kind]
    gen = torch.Generator().manual_seed(seed)
    if mixing is None:
        return torch.softmax(torch.randn(batch_size, num_classes, generator=gen), dim=1)
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen)
    labels[3] = labels[11]  # a same-class pair: duplicate target rows for duplicates='merge'
    np.random.seed(seed)
    return Mixup(num_classes=num_classes, **mixing)(torch.zeros(batch_size, 1, 2, 2), labels)[1]


def cases():
    """(name, options, global logits, global targets): the same in every process (seeded)."""
    out = []
    for i, (kind, axes, duplicates, fmt, unmixed) in enumerate(itertools.product(
            TARGETS, ('both', 'class', 'pair'), ('paper', 'merge'), FORMATS, ('icm', 'ce'))):
        if kind == 'teacher' and fmt == 'sparse':
            continue
        target = make_targets(kind, i)
        logits = torch.randn(N, target.shape[1], generator=torch.Generator().manual_seed(i), dtype=torch.float64) * 2
        dtype = torch.float64 if i % 2 else torch.float32  # both widths through the compact transport
        out.append((f'{kind}-{axes}-{duplicates}-{fmt}-{unmixed}',
                    dict(axes=axes, duplicates=duplicates, target_format=fmt, unmixed=unmixed),
                    logits.to(dtype), target.to(dtype)))
    target = make_targets('mixup', 1000)
    logits = torch.randn(N, target.shape[1], generator=torch.Generator().manual_seed(1000)) * 300
    out.append(('positive-softmax-underflows', {}, logits, target))
    return out


COMPARED_WITH_THE_ALL_GATHER = {name for name, *_ in cases()[::5]}  # also through the earlier all-gather of logits


def icm(options, gather=True):
    options = dict(options)
    return (InfiniteClassCrossEntropy if gather else _GatheringLogits)(
        gather_distributed=True, **{**options, 'target_format': options.get('target_format', 'auto').split('-')[0]})


def rank_rows(tensor, rank, world_size, dim=0):
    rows = tensor.shape[dim] // world_size
    return tensor.narrow(dim, rank * rows, rows)


def loss_and_grad(loss_fn, logits, target):
    logits = logits.detach().clone().requires_grad_()
    loss = loss_fn(logits, target)
    loss.backward()
    return loss.item(), logits.grad.double().numpy()


def _worker(rank, world_size, folder):
    dist.init_process_group('gloo', init_method=f'file://{folder}/rendezvous', rank=rank, world_size=world_size)
    results = {}
    for name, options, logits, target in cases():
        mine = rank_rows(logits, rank, world_size), rank_rows(target, rank, world_size)
        dense_work = loss_fast.DENSE_SCORE_WORK['cpu']
        if options.get('target_format') == 'auto-sparse':
            loss_fast.DENSE_SCORE_WORK['cpu'] = 0
        results[name] = loss_and_grad(icm(options), *mine)
        if name in COMPARED_WITH_THE_ALL_GATHER:
            results[name + ' (all-gather of logits)'] = loss_and_grad(icm(options, gather=False), *mine)
        loss_fast.DENSE_SCORE_WORK['cpu'] = dense_work
    results.update(_wrapped_losses(rank, world_size))
    results.update(_refusals(rank, world_size))
    with open(os.path.join(folder, f'rank{rank}.pickle'), 'wb') as f:  # more than a pipe holds
        pickle.dump(results, f)
    dist.destroy_process_group()


def wrapped_cases():
    """RegMixup, LogitAdjustedLoss and bf16 autocast around the gathered loss: rank r's logits
    ``[W, 2, n, C]`` [r] (RegMixup's clean and mixed rows), targets ``[2, N, C]``."""
    clean = make_targets('unmixed', 2000)
    mixed = make_targets('cutmix', 2001)
    logits = torch.randn(2, N, clean.shape[1], generator=torch.Generator().manual_seed(2002), dtype=torch.float64)
    return logits, torch.stack((clean, mixed)).double()


def _wrapped_losses(rank, world_size):
    logits, target = wrapped_cases()
    n = N // world_size
    mine = logits[:, rank * n:(rank + 1) * n].reshape(2 * n, -1)
    results = {'regmixup': loss_and_grad(RegMixupLoss(icm({}), weight=0.7), mine, target[:, rank * n:(rank + 1) * n])}
    mixed_logits, mixed_target = logits[1, rank * n:(rank + 1) * n], target[1, rank * n:(rank + 1) * n]
    adjusted = LogitAdjustedLoss(icm({'duplicates': 'merge'}), CLASS_COUNTS + [3] * (target.shape[2] - 7), tau=0.5)
    results['logit-adjusted'] = loss_and_grad(adjusted, mixed_logits.float(), mixed_target.float())
    # The forward under autocast and backward() after it, as torch advises and timm's train.py does: a
    # backward() inside autocast runs the backward's matmuls in bf16 too (measured: 4.8 % off on small entries).
    bf16 = mixed_logits.bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = icm({'target_format': 'sparse'})(bf16, mixed_target.float())
    loss.backward()
    results['bf16-autocast'] = loss.item(), bf16.grad.double().numpy()
    return results


def _refusals(rank, world_size):
    """One clear line on every rank, and the process group still works after it."""
    messages = {}
    target = make_targets('mixup', 3000).float()
    rows = N // world_size - (2 if rank == 1 else 0)
    try:
        icm({})(torch.randn(rows, target.shape[1]), target[:rows])
    except ValueError as error:
        messages['unequal rows'] = str(error)
    teacher = make_targets('teacher', 3001).float()
    try:
        icm({'target_format': 'sparse'})(rank_rows(torch.randn(N, 7), rank, world_size),
                                         rank_rows(teacher, rank, world_size))
    except ValueError as error:
        messages['sparse with teacher targets'] = str(error)
    return messages


def reference_loss(S, Y, axes='both', duplicates='paper', unmixed='icm', **_):
    """Eq. 9 (5, 7) on the global batch in float64, plain autograd."""
    S, Y = S.double(), Y.double()
    mixed = ((Y > Y.amin(dim=1, keepdim=True)).sum(dim=1) > 1).any()
    if unmixed == 'ce' and not mixed:
        return -(Y * torch.log_softmax(S, dim=1)).sum(dim=1).mean()
    M = S @ Y.T
    positives = M.diagonal()
    counts = (Y[:, None, :] == Y[None, :, :]).all(dim=2).sum(dim=0).double()
    class_bias = counts.log() if duplicates == 'merge' else torch.zeros_like(counts)
    class_ce = (torch.logsumexp(M - class_bias[None, :], dim=1) - positives).mean()
    pair_ce = (torch.logsumexp(M, dim=0) - positives).mean()
    return {'both': class_ce + pair_ce, 'class': class_ce, 'pair': pair_ce}[axes]


def reference_wrapped():
    logits, target = wrapped_cases()
    logits = logits.clone().requires_grad_()
    clean_ce = -(target[0] * torch.log_softmax(logits[0], dim=1)).sum(dim=1).mean()
    references = {'regmixup': (clean_ce + 0.7 * reference_loss(logits[1], target[1]), logits)}
    mixed = logits[1].detach().clone().requires_grad_()
    counts = torch.tensor(CLASS_COUNTS + [3] * (target.shape[2] - 7), dtype=torch.float64)
    prior = (counts / counts.sum()).log()
    references['logit-adjusted'] = (reference_loss(mixed.float().double() + 0.5 * prior.float().double(),
                                                   target[1].float(), duplicates='merge'), mixed)
    bf16 = logits[1].detach().bfloat16().double().requires_grad_()
    references['bf16-autocast'] = (reference_loss(bf16, target[1].float()), bf16)
    return references


def per_rank(world_size, results, name):
    losses = [results[rank][name][0] for rank in range(world_size)]
    grads = np.concatenate([results[rank][name][1] for rank in range(world_size)])
    return float(np.mean(losses)), torch.from_numpy(grads) / world_size


def spawn(world_size, tmp_path):
    mp.spawn(_worker, args=(world_size, str(tmp_path)), nprocs=world_size)
    results = []
    for rank in range(world_size):
        with open(tmp_path / f'rank{rank}.pickle', 'rb') as f:
            results.append(pickle.load(f))
    return results


@pytest.mark.parametrize('world_size', [2, 4])
def test_global_batch_loss_is_exact_on_gloo(world_size, tmp_path):
    results = spawn(world_size, tmp_path)
    for name, options, logits, target in cases():
        leaf = logits.double().requires_grad_()
        reference = reference_loss(leaf, target, **options)
        (reference_grad,) = torch.autograd.grad(reference, leaf)
        tolerance = dict(rtol=1e-5, atol=1e-5) if logits.dtype == torch.float32 else {}
        for variant in (name, name + ' (all-gather of logits)') if name in COMPARED_WITH_THE_ALL_GATHER else (name,):
            loss, grad = per_rank(world_size, results, variant)
            torch.testing.assert_close(torch.tensor(loss, dtype=torch.float64), reference.detach(), **tolerance,
                                       msg=lambda m: f'{variant}: {m}')
            torch.testing.assert_close(grad, reference_grad, **tolerance, msg=lambda m: f'{variant}: {m}')
        compared_ranks = range(world_size) if name in COMPARED_WITH_THE_ALL_GATHER else ()
        for rank in compared_ranks:  # rank by rank the same loss as the earlier all-gather of logits
            new, old = results[rank][name][0], results[rank][name + ' (all-gather of logits)'][0]
            assert new == pytest.approx(old, rel=1e-5 if logits.dtype == torch.float32 else 1e-12), name
    for name, (reference, leaf) in reference_wrapped().items():
        loss, grad = per_rank(world_size, results, name)
        (reference_grad,) = torch.autograd.grad(reference, leaf)
        if name == 'regmixup':  # rank r's rows are [clean_r; mixed_r]
            n = N // world_size
            reference_grad = reference_grad.reshape(2, world_size, n, -1).transpose(0, 1).reshape(2 * N, -1)
        tolerance = grad_tolerance = dict(rtol=1e-5, atol=1e-6)
        if name == 'bf16-autocast':
            # Both sides start from the same bf16 logits; the loss computes in float32 (autocast is left inside
            # it), the reference in float64: the losses differ by float32 rounding alone (measured 2.2e-8
            # relative on 2 ranks, 4.6e-9 on 4). The gradient is the float32 one rounded once to the bf16 of
            # the leaf: at most half a bf16 ulp, 2**-8 relative (measured 3.77e-3, and bit for bit the float64
            # gradient rounded to bf16), plus float32 rounding (atol).
            tolerance, grad_tolerance = dict(rtol=1e-6, atol=0.), dict(rtol=2 ** -8, atol=1e-7)
        torch.testing.assert_close(torch.tensor(loss, dtype=torch.float64), reference.detach(), **tolerance)
        torch.testing.assert_close(grad, reference_grad, **grad_tolerance, msg=lambda m: f'{name}: {m}')
    for rank in range(world_size):
        unequal = results[rank]['unequal rows']
        assert 'needs the same number of rows on every rank (drop_last=True)' in unequal and '\n' not in unequal
        assert f'the ranks hold {N // world_size - 2} to {N // world_size}' in unequal
        teacher = results[rank]['sparse with teacher targets']
        assert "rows of the global batch (every rank's) have three or more classes" in teacher
        assert "pass target_format='dense'" in teacher


def summary_rows(folder):
    with open(os.path.join(folder, 'summary.csv'), newline='') as f:
        return list(csv.DictReader(f))


def test_torchrun_train_icm_matches_one_process_on_the_same_global_batch(tmp_path, fashion_mnist_dir):
    """train_icm.py --icm-gather under torchrun: its per-epoch train loss (the mean of the ranks' losses)
    is the single-process loss of the same global batch, step after step.

    Matched by construction: the global batch is the whole training set (40 images, one step an
    epoch; the loss is invariant to the order of the batch's rows, so the samplers' orders do not
    matter), no augmentation, a model without batch statistics (a 1-block ViT: LayerNorm), and no
    mixing (--mixup-prob 0: each rank's mixer pairs images within its own batch and draws its own
    lambdas from seed + rank, which a single process cannot reproduce); the ICM loss then contrasts
    the batch's classes (unmixed='icm')."""
    flags = ['--dataset', 'torch/fashion_mnist', '--data-dir', fashion_mnist_dir, '--model', 'vit_tiny_patch16_224',
             '--model-kwargs', 'img_size=28', 'patch_size=7', 'depth=1', '--num-classes', '10', '--in-chans', '1',
             '--input-size', '1', '28', '28', '--mean', '0.286', '--std', '0.353', '--smoothing', '0', '--no-aug',
             '--train-samples-per-class', '4', '--eval-samples-per-class', '2', '--mixup', '0.2', '--mixup-prob', '0',
             '--icm', '--icm-gather', '--opt', 'sgd', '--lr', '0.02', '--weight-decay', '0', '--sched', 'step',
             '--warmup-epochs', '0', '--epochs', '3', '-j', '0', '--seed', '0', '--output', str(tmp_path)]
    single = subprocess.run([sys.executable, os.path.join(ROOT, 'train_icm.py'), *flags, '-b', '40',
                             '--experiment', 'single'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                          '29541', os.path.join(ROOT, 'train_icm.py'), *flags, '-b', '20', '--experiment', 'ddp'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-1000:] + ddp.stderr[-3000:]
    losses = {name: [float(row['train_loss']) for row in summary_rows(tmp_path / name)] for name in ('single', 'ddp')}
    assert len(losses['ddp']) == 3
    assert losses['ddp'] == pytest.approx(losses['single'], rel=1e-5)
