"""The mixers: parity with timm, RegMixup layout, Remix label weights, bad input."""
import copy

import numpy as np
import pytest
import torch
from timm.data import FastCollateMixup, Mixup
from timm.data.loader import PrefetchLoader
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from timm_icm import (FastCollateInfiniteClassMixup, InfiniteClassCrossEntropy, InfiniteClassMixup, RegMixupLoss,
                      remix_label_weight)

NUM_CLASSES = 10
CONFIGS = {  # timm Mixup arguments: mixup, cutmix, both (switch), partial prob, minmax, no smoothing
    'mixup': dict(mixup_alpha=0.4, label_smoothing=0.1),
    'cutmix': dict(mixup_alpha=0., cutmix_alpha=1.0, label_smoothing=0.1),
    'switch': dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1),
    'prob': dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, label_smoothing=0.0),
    'minmax': dict(cutmix_minmax=(0.2, 0.8), mixup_alpha=0., label_smoothing=0.1, correct_lam=False),
}
MODES = ['batch', 'pair', 'elem']


def batch(size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(size, 3, 12, 12, generator=g), torch.randint(0, NUM_CLASSES, (size,), generator=g)


def samples(size=8, seed=0, as_numpy=True):
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(size):
        image = rng.randint(0, 256, (3, 12, 12)).astype(np.uint8)
        out.append((image if as_numpy else torch.from_numpy(image), int(rng.randint(NUM_CLASSES))))
    return out


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('config', CONFIGS)
def test_mixup_parity_draw_for_draw(mode, config):
    kwargs = dict(CONFIGS[config], mode=mode, num_classes=NUM_CLASSES)
    ours, theirs = InfiniteClassMixup(**kwargs), Mixup(**kwargs)
    np.random.seed(7)
    expected = [theirs(*map(torch.clone, batch(seed=s))) for s in range(4)]
    np.random.seed(7)
    got = [ours(*map(torch.clone, batch(seed=s))) for s in range(4)]
    mixed_any = False
    for (x, t), (ex, et) in zip(got, expected):
        assert torch.equal(x, ex) and torch.equal(t, et)
        mixed_any |= not torch.equal(x, batch(seed=0)[0])
    assert mixed_any


@pytest.mark.parametrize('as_numpy', [True, False])
@pytest.mark.parametrize('mode', MODES + ['half'])
@pytest.mark.parametrize('config', CONFIGS)
def test_fast_collate_parity_draw_for_draw(mode, config, as_numpy):
    kwargs = dict(CONFIGS[config], mode=mode, num_classes=NUM_CLASSES)
    ours, theirs = FastCollateInfiniteClassMixup(**kwargs), FastCollateMixup(**kwargs)
    np.random.seed(3)
    expected = [theirs(samples(seed=s, as_numpy=as_numpy)) for s in range(4)]
    np.random.seed(3)
    got = [ours(samples(seed=s, as_numpy=as_numpy)) for s in range(4)]
    for (x, t), (ex, et) in zip(got, expected):
        assert x.dtype == torch.uint8 and torch.equal(x, ex) and torch.equal(t, et)


@pytest.mark.parametrize('mode', MODES)
def test_regmixup_returns_clean_then_timms_mixed_batch(mode):
    kwargs = dict(mixup_alpha=20., cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=NUM_CLASSES)
    x, y = batch()
    np.random.seed(1)
    mixed_x, mixed_t = Mixup(**kwargs)(x.clone(), y)
    np.random.seed(1)
    out_x, out_t = InfiniteClassMixup(regmixup=True, **kwargs)(x.clone(), y)
    assert out_x.shape == (16, 3, 12, 12) and out_t.shape == (2, 8, NUM_CLASSES)
    assert torch.equal(out_x[:8], x) and torch.equal(out_x[8:], mixed_x)
    assert torch.equal(out_t[0], mixup_target(y, NUM_CLASSES, 1., 0.1)) and torch.equal(out_t[1], mixed_t)


@pytest.mark.parametrize('mode', MODES + ['half'])
def test_fast_collate_regmixup_returns_clean_then_timms_mixed_batch(mode):
    kwargs = dict(mixup_alpha=20., cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=NUM_CLASSES)
    np.random.seed(2)
    mixed_x, mixed_t = FastCollateMixup(**kwargs)(samples())
    np.random.seed(2)
    out_x, out_t = FastCollateInfiniteClassMixup(regmixup=True, **kwargs)(samples())
    n = len(mixed_x)
    clean = torch.stack([torch.from_numpy(image) for image, _ in samples()[:n]])
    labels = torch.tensor([label for _, label in samples()])
    assert out_x.dtype == torch.uint8 and out_x.shape == (2 * n, 3, 12, 12)
    assert torch.equal(out_x[:n], clean) and torch.equal(out_x[n:], mixed_x)
    assert torch.equal(out_t[0], mixup_target(labels, NUM_CLASSES, 1., 0.1)[:n]) and torch.equal(out_t[1], mixed_t)


@pytest.mark.parametrize('cls', [InfiniteClassMixup, FastCollateInfiniteClassMixup])
def test_regmixup_with_mixing_switched_off_returns_the_clean_batch(cls):
    mixer = cls(mixup_alpha=20., regmixup=True, num_classes=NUM_CLASSES, label_smoothing=0.1)
    mixer.mixup_enabled = False
    state = np.random.get_state()
    x, t = mixer(*map(torch.clone, batch())) if cls is InfiniteClassMixup else mixer(samples())
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # no draw, as timm's mixer
    labels = batch()[1] if cls is InfiniteClassMixup else torch.tensor([s[1] for s in samples()])
    assert x.shape[0] == 8 and torch.equal(t, mixup_target(labels, NUM_CLASSES, 1., 0.1))
    # ... and the RegMixup loss of that batch is the clean cross-entropy, whichever mixed loss.
    logits = torch.randn(8, NUM_CLASSES)
    for mixed_loss in (InfiniteClassCrossEntropy(), SoftTargetCrossEntropy()):
        assert RegMixupLoss(mixed_loss, weight=1.)(logits, t).item() == pytest.approx(
            SoftTargetCrossEntropy()(logits, t).item())


@pytest.mark.parametrize('mixed_loss', [InfiniteClassCrossEntropy(), SoftTargetCrossEntropy()])
def test_regmixup_loss_is_clean_ce_plus_eta_mixed_loss(mixed_loss):
    x, y = batch()
    np.random.seed(4)
    out_x, out_t = InfiniteClassMixup(mixup_alpha=20., regmixup=True, num_classes=NUM_CLASSES)(x, y)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, NUM_CLASSES))
    logits = model(out_x)
    loss = RegMixupLoss(mixed_loss, weight=0.5)(logits, out_t)
    expected = SoftTargetCrossEntropy()(logits[:8], out_t[0]) + 0.5 * mixed_loss(logits[8:], out_t[1])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model[1].weight.grad.abs().sum() > 0


def test_regmixup_end_to_end_through_loader_and_prefetcher():
    """timm's prefetcher path: collate in the loader, normalise on the device, loss on the layout."""
    data = samples(size=32, seed=5)
    mixer = FastCollateInfiniteClassMixup(mixup_alpha=20., regmixup=True, num_classes=NUM_CLASSES)
    loader = torch.utils.data.DataLoader(data, batch_size=8, collate_fn=mixer, drop_last=True)
    prefetcher = PrefetchLoader(loader, mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device('cpu'))
    loss_fn = RegMixupLoss(InfiniteClassCrossEntropy())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, NUM_CLASSES))
    seen = 0
    for x, t in prefetcher:
        assert x.dtype == torch.float32 and x.shape == (16, 3, 12, 12) and t.shape == (2, 8, NUM_CLASSES)
        assert torch.isfinite(loss_fn(model(x), t))
        seen += 1
    assert seen == 4
    prefetcher.mixup_enabled = False  # timm's --mixup-off-epoch switch, through the loader
    assert all(x.shape[0] == 8 and t.shape == (8, NUM_CLASSES) for x, t in prefetcher)


@pytest.mark.parametrize('count_a, count_b, lam, expected', [
    (300, 100, 0.3, 0.0),   # a is 3x as frequent and contributes less than tau: all label to b
    (300, 100, 0.5, 0.5),   # a frequent but lam >= tau: plain mixup weight
    (299, 100, 0.3, 0.3),   # ratio just under kappa: plain mixup weight
    (100, 300, 0.7, 1.0),   # a is the rare class and 1 - lam < tau: all label to a
    (100, 300, 0.5, 0.5),   # 1 - lam == tau is not < tau
    (100, 299, 0.7, 0.7),   # ratio just over 1 / kappa
    (100, 100, 0.1, 0.1),   # balanced classes: mixup
    (5, 0, 0.2, 0.0),       # a zero count is safe
])
def test_remix_rule(count_a, count_b, lam, expected):
    got = remix_label_weight(torch.tensor([lam]), torch.tensor([count_a]), torch.tensor([count_b]), kappa=3., tau=0.5)
    assert got.shape == (1, 1) and got.item() == pytest.approx(expected)


def remix_expected(labels, lam, counts, kappa=3., tau=0.5, smoothing=0.1):
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64).reshape(-1), (len(labels),))
    weights = []
    for i in range(len(labels)):
        n_a, n_b = counts[labels[i]], counts[labels[len(labels) - 1 - i]]
        w = lam[i]
        if n_a / n_b >= kappa and lam[i] < tau:
            w = 0.
        elif n_a / n_b <= 1 / kappa and 1 - lam[i] < tau:
            w = 1.
        weights.append(w)
    return mixup_target(labels, NUM_CLASSES, torch.tensor(weights, dtype=torch.float32)[:, None], smoothing)


@pytest.mark.parametrize('mode', MODES)
def test_remix_mixer_applies_the_rule_to_timms_lambda(mode):
    counts = [5000, 2000, 1000, 500, 200, 100, 50, 20, 10, 5]
    kwargs = dict(mixup_alpha=1.0, mode=mode, num_classes=NUM_CLASSES, label_smoothing=0.1)
    x, y = batch(size=32)
    np.random.seed(6)
    mixed_x, _ = Mixup(**kwargs)(x.clone(), y)
    np.random.seed(6)
    theirs = InfiniteClassMixup(**kwargs)
    lam = theirs._mix(x.clone())
    np.random.seed(6)
    out_x, out_t = InfiniteClassMixup(remix=True, class_counts=counts, **kwargs)(x.clone(), y)
    assert torch.equal(out_x, mixed_x)  # Remix changes labels, never inputs
    lam = lam.flatten().tolist() if torch.is_tensor(lam) else lam
    torch.testing.assert_close(out_t, remix_expected(y, lam, counts))
    plain_weights = np.broadcast_to(np.asarray(lam), (32,))
    assert not torch.allclose(out_t, mixup_target(y, NUM_CLASSES, torch.tensor(plain_weights)[:, None].float(), 0.1))


def test_fast_collate_remix_matches_the_tensor_path():
    counts = [5000, 2000, 1000, 500, 200, 100, 50, 20, 10, 5]
    kwargs = dict(mixup_alpha=1.0, mode='elem', num_classes=NUM_CLASSES, remix=True, class_counts=counts)
    data = samples(size=16, seed=8)
    np.random.seed(9)
    _, collate_t = FastCollateInfiniteClassMixup(**kwargs)(copy.deepcopy(data))
    np.random.seed(9)
    x = torch.stack([torch.from_numpy(i).float() for i, _ in data])
    _, tensor_t = InfiniteClassMixup(**kwargs)(x, torch.tensor([label for _, label in data]))
    torch.testing.assert_close(collate_t, tensor_t)


def test_remix_and_regmixup_together():
    counts = [5000, 2000, 1000, 500, 200, 100, 50, 20, 10, 5]
    x, y = batch()
    np.random.seed(10)
    remix = InfiniteClassMixup(mixup_alpha=1., remix=True, class_counts=counts, num_classes=NUM_CLASSES)
    _, remix_t = remix(x.clone(), y)
    np.random.seed(10)
    out_x, out_t = InfiniteClassMixup(mixup_alpha=1., remix=True, regmixup=True, class_counts=counts,
                                      num_classes=NUM_CLASSES)(x.clone(), y)
    assert out_x.shape[0] == 16 and torch.equal(out_t[1], remix_t)


@pytest.mark.parametrize('kwargs, error, words', [
    (dict(remix=True), ValueError, ['class_counts']),
    (dict(remix=True, class_counts=[1] * 9), ValueError, ['expected 10, got 9']),
    (dict(remix=True, class_counts=[-1] * 10), ValueError, ['>= 0']),
    (dict(remix=True, class_counts=[1] * 10, remix_kappa=0.5), ValueError, ['remix_kappa must be >= 1', '0.5']),
    (dict(remix=True, class_counts=[1] * 10, remix_tau=2), ValueError, ['remix_tau must be in [0, 1]', '2']),
])
@pytest.mark.parametrize('cls', [InfiniteClassMixup, FastCollateInfiniteClassMixup])
def test_bad_options(cls, kwargs, error, words):
    with pytest.raises(error) as info:
        cls(num_classes=NUM_CLASSES, **kwargs)
    assert all(word in str(info.value) for word in words)


@pytest.mark.parametrize('x, y, error, words', [
    (torch.rand(7, 3, 4, 4), torch.zeros(7, dtype=torch.long), ValueError, ['must be even', 'got 7', 'drop_last']),
    (torch.rand(8, 3, 4, 4), torch.rand(8), ValueError, ['integer class indices of shape [8]', 'torch.float32']),
    (torch.rand(8, 3, 4, 4), torch.zeros(6, dtype=torch.long), ValueError, ['[8]', '(6,)']),
    (torch.rand(8, 3, 4, 4), torch.zeros(8, 2, dtype=torch.long), ValueError, ['[8]', '(8, 2)']),
    (torch.rand(8, 3, 4, 4), [0] * 8, TypeError, ['tensor', 'list']),
])
@pytest.mark.parametrize('options', [dict(), dict(regmixup=True)])
def test_bad_batches(x, y, error, words, options):
    with pytest.raises(error) as info:
        InfiniteClassMixup(num_classes=NUM_CLASSES, **options)(x, y)
    assert all(word in str(info.value) for word in words)


def test_bad_collate_batches():
    with pytest.raises(ValueError, match='must be even'):
        FastCollateInfiniteClassMixup(num_classes=NUM_CLASSES, regmixup=True)(samples(size=7))
    with pytest.raises(TypeError, match='list of \\(image, target\\) samples'):
        FastCollateInfiniteClassMixup(num_classes=NUM_CLASSES)(torch.zeros(8, 3))


def test_regmixup_loss_rejects_a_wrong_layout():
    with pytest.raises(ValueError, match=r'logits \[2B, C\].*got logits \(8, 10\) and targets \(2, 8, 10\)'):
        RegMixupLoss(InfiniteClassCrossEntropy())(torch.randn(8, NUM_CLASSES), torch.rand(2, 8, NUM_CLASSES))
    with pytest.raises(ValueError, match='eta'):
        RegMixupLoss(InfiniteClassCrossEntropy(), weight=-1)
