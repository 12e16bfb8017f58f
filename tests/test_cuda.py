"""The loss on a CUDA device: the same numbers as on the CPU, both score layouts, no host sync.

Skipped without a GPU (CI has none); run on one with ``pytest tests/test_cuda.py``.
"""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from timm_icm import InfiniteClassCrossEntropy, RegMixupLoss, infinite_class_cross_entropy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

# (B, C): C >= 2B gathers columns of the logits, C < 2B sums rows of their transpose.
LAYOUTS = [(256, 1000), (256, 10)]


def mixed_targets(batch, classes, seed=0):
    np.random.seed(seed)
    labels = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed))
    mixer = Mixup(mixup_alpha=0.4, mode='elem', label_smoothing=0.1, num_classes=classes)
    return mixer(torch.zeros(batch, 1, 1, 1), labels)[1]


def loss_and_grad(logits, target, **kwargs):
    logits = logits.detach().clone().requires_grad_()
    loss = infinite_class_cross_entropy(logits, target, **kwargs)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize('batch,classes', LAYOUTS)
@pytest.mark.parametrize('axes', ['both', 'class', 'pair'])
@pytest.mark.parametrize('duplicates', ['paper', 'merge'])
def test_cuda_matches_cpu_float64_for_both_formats(batch, classes, axes, duplicates):
    target = mixed_targets(batch, classes).double()
    logits = 3 * torch.randn(batch, classes, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grad = loss_and_grad(logits, target, axes=axes, duplicates=duplicates, target_format='dense')
    for target_format in ('dense', 'sparse'):
        loss, grad = loss_and_grad(logits.cuda(), target.cuda(), axes=axes, duplicates=duplicates,
                                   target_format=target_format)
        torch.testing.assert_close(loss.cpu(), ref_loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad.cpu(), ref_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('batch,classes', LAYOUTS)
@pytest.mark.parametrize('unmixed', ['icm', 'ce'])
@pytest.mark.parametrize('mixed', [True, False])
def test_forward_and_backward_never_sync_the_host(batch, classes, unmixed, mixed):
    if mixed:
        target = mixed_targets(batch, classes).cuda()
    else:  # mixing switched off: one-hot rows
        target = torch.eye(classes, device='cuda')[torch.arange(batch, device='cuda') % classes]
    logits = torch.randn(batch, classes, device='cuda', requires_grad=True)
    for duplicates, target_format in itertools.product(('paper', 'merge'), ('dense', 'sparse', 'auto')):
        loss_fn = InfiniteClassCrossEntropy(duplicates=duplicates, unmixed=unmixed, target_format=target_format)
        loss_fn(logits, target).backward()  # 'auto' checks the targets at the first call (one sync); warms caches
        assert loss_fn.sparse_targets is (True if target_format == 'auto' else None)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            loss = loss_fn(logits, target)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode('default')
        assert torch.isfinite(loss).item()
        if unmixed == 'ce' and not mixed:
            torch.testing.assert_close(loss, SoftTargetCrossEntropy()(logits, target))


def test_sparse_path_fails_a_device_side_assertion_without_a_host_sync():
    """Targets the sparse path cannot represent stop the run at its next sync, never a NaN loss.
    A failed device-side assertion ends the CUDA context, so it runs in a process of its own."""
    code = (
        'import torch\n'
        'from timm_icm import InfiniteClassCrossEntropy\n'
        'teacher = torch.softmax(torch.randn(64, 100, device="cuda"), 1)\n'
        'logits = torch.randn(64, 100, device="cuda", requires_grad=True)\n'
        'loss_fn = InfiniteClassCrossEntropy(target_format="sparse")\n'
        'torch.cuda.synchronize()\n'
        'torch.cuda.set_sync_debug_mode("error")\n'
        'loss = loss_fn(logits, teacher)\n'
        'torch.cuda.set_sync_debug_mode("default")\n'
        'print("queued without a sync", flush=True)\n'
        'print("loss", loss.item(), flush=True)\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=300)
    assert 'queued without a sync' in result.stdout, result.stderr[-2000:]
    assert not result.stdout.splitlines()[-1].startswith('loss') and result.returncode != 0
    assert 'device-side assert' in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize('amp_dtype', [torch.bfloat16, torch.float16])
def test_autocast_loss_is_float32_of_the_upcast_logits(amp_dtype):
    batch, classes = 128, 100
    target = mixed_targets(batch, classes).cuda()
    layer = torch.nn.Linear(64, classes).cuda()
    feats = torch.randn(batch, 64, device='cuda')
    loss_fn = InfiniteClassCrossEntropy()
    with torch.autocast('cuda', dtype=amp_dtype):
        logits = layer(feats)
        loss = loss_fn(logits, target)
    assert logits.dtype == amp_dtype and loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fn(logits.float(), target), rtol=0, atol=0)


def test_regmixup_loss_on_cuda_matches_cpu():
    batch, classes = 64, 100
    target = mixed_targets(batch, classes)
    clean = torch.eye(classes)[torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(2))]
    stacked = torch.stack([clean, target])
    logits = torch.randn(2 * batch, classes, generator=torch.Generator().manual_seed(3))
    loss_fn = RegMixupLoss(InfiniteClassCrossEntropy(), weight=0.5)
    torch.testing.assert_close(loss_fn(logits.cuda(), stacked.cuda()).cpu(), loss_fn(logits, stacked),
                               rtol=1e-5, atol=1e-5)
