"""torch.compile of InfiniteClassCrossEntropy: one graph for every target_format, the eager numbers.

Most tests compile with the ``aot_eager`` backend: it runs what ``fullgraph=True`` is about (Dynamo
captures the whole forward, AOTAutograd traces it and the loss's own backward) in a fraction of
a second. One test compiles with the default backend, inductor, which generates C++ on the CPU.
"""
import numpy as np
import pytest
import torch
from timm.data import Mixup
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import timm_icm.loss_fast as loss_fast
from timm_icm import InfiniteClassCrossEntropy

B, C = 8, 6


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch, so its graph counts are its own."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def mixed_targets(seed, prob=1.0):
    np.random.seed(seed)
    labels = torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(seed))
    mixer = Mixup(mixup_alpha=0.4, label_smoothing=0.1, prob=prob, mode='batch', num_classes=C)
    return mixer(torch.zeros(B, 1, 2, 2), labels)[1]


def loss_and_grad(loss_fn, logits, target):
    logits = logits.detach().clone().requires_grad_()
    loss = loss_fn(logits, target)
    loss.backward()
    return loss.detach(), logits.grad


def assert_compiled_equals_eager(loss_fn, compiled, seeds=(0, 1)):
    for seed in seeds:
        logits = 3 * torch.randn(B, C, generator=torch.Generator().manual_seed(100 + seed))
        target = mixed_targets(seed)
        (loss, grad), (expected, expected_grad) = (loss_and_grad(f, logits, target) for f in (compiled, loss_fn))
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize('target_format', ['dense', 'sparse'])
@pytest.mark.parametrize('axes', ['both', 'class', 'pair'])
def test_fullgraph_equals_eager(axes, target_format):
    loss_fn = InfiniteClassCrossEntropy(axes=axes, target_format=target_format)
    backend = CompileCounterWithBackend('aot_eager')
    assert_compiled_equals_eager(loss_fn, torch.compile(loss_fn, fullgraph=True, backend=backend))
    assert backend.frame_count == 1  # one graph, and the second batch reused it


@pytest.mark.parametrize('path', ['dense', 'sparse'])
@pytest.mark.parametrize('fullgraph', [True, False])
def test_auto_format_compiles_to_one_graph_from_the_first_call(monkeypatch, fullgraph, path):
    """'auto' reads the first batch's targets on the host, in a forward pre-hook that torch.compile
    runs outside the graph: no graph break, not even at the first call."""
    if path == 'sparse':  # what 'auto' picks at large B^2 C
        monkeypatch.setitem(loss_fast.DENSE_SCORE_WORK, 'cpu', 0)
    loss_fn = InfiniteClassCrossEntropy()
    backend = CompileCounterWithBackend('aot_eager')
    compiled = torch.compile(loss_fn, fullgraph=fullgraph, backend=backend)
    assert_compiled_equals_eager(loss_fn, compiled, seeds=(0, 1, 2))
    assert loss_fn.sparse_targets is True and not loss_fn._forward_pre_hooks  # the hook ran once, then left
    assert backend.frame_count == 1 and not counters['graph_break']


@pytest.mark.parametrize('options', [dict(duplicates='merge'), dict(unmixed='ce'),
                                     dict(unmixed='ce', target_format='sparse', duplicates='merge')])
def test_options_compile_to_one_graph(options):
    """unmixed='ce' in a graph chooses its branch on the device (no host read); 'merge' hashes rows
    without a random generator."""
    loss_fn = InfiniteClassCrossEntropy(**options)
    compiled = torch.compile(loss_fn, fullgraph=True, backend='aot_eager')
    assert_compiled_equals_eager(loss_fn, compiled)
    unmixed = mixed_targets(3, prob=0.0)  # mixing off: one-hot rows with label smoothing
    logits = torch.randn(B, C)
    torch.testing.assert_close(compiled(logits, unmixed), loss_fn(logits, unmixed))


def test_compiled_sparse_path_fails_loudly_and_nan_still_propagates():
    loss_fn = InfiniteClassCrossEntropy(target_format='sparse')
    compiled = torch.compile(loss_fn, fullgraph=True, backend='aot_eager')
    teacher = torch.softmax(torch.randn(B, C), dim=1)  # no mixer makes these: every class above the floor
    with pytest.raises(RuntimeError, match="cannot represent them; pass target_format='dense'"):
        compiled(torch.randn(B, C), teacher)
    logits = torch.randn(B, C)
    logits[2, 4] = float('nan')
    assert torch.isnan(compiled(logits, mixed_targets(0)))


def test_default_backend():
    """Inductor, the backend of a plain ``torch.compile(loss, fullgraph=True)``."""
    for target_format in ('auto', 'sparse'):
        loss_fn = InfiniteClassCrossEntropy(target_format=target_format)
        assert_compiled_equals_eager(loss_fn, torch.compile(loss_fn, fullgraph=True), seeds=(0,))
