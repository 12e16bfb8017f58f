"""timm_icm.analyze: the Sec. 4.3 / Figure 4 analysis against an independent plain-torch computation."""
import argparse
import csv
import functools
import gzip
import json
import os

import numpy as np
import pytest
import timm
import torch
import yaml
from timm.utils import CheckpointSaver

import timm_icm  # noqa: F401  (registers resnet20_cifar)
from timm_icm import analyze

MEAN, STD = 0.286, 0.353


def save_run(folder, seed):
    """A tiny resnet20_cifar run folder as train_icm.py leaves it: CheckpointSaver files and args.yaml."""
    torch.manual_seed(seed)
    model = timm.create_model('resnet20_cifar', num_classes=10, in_chans=1)
    with torch.no_grad():  # non-trivial BatchNorm statistics and classifier bias
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        model.fc.bias.normal_()
    args = argparse.Namespace(model='resnet20_cifar', num_classes=10, in_chans=1, input_size=[1, 28, 28],
                              mean=[0.5], std=[0.5], dataset='torch/fashion_mnist', val_split='validation')
    os.makedirs(folder)
    saver = CheckpointSaver(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), args=args,
                            checkpoint_dir=folder, recovery_dir=folder, max_history=1)
    saver.save_checkpoint(0, metric=1.0)
    run_args = dict(vars(args), mean=[MEAN], std=[STD], experiment=os.path.basename(folder))  # args.yaml wins
    with open(os.path.join(folder, 'args.yaml'), 'w') as f:
        yaml.safe_dump(run_args, f)
    return os.path.join(folder, 'last.pth.tar')


@pytest.fixture(scope='module')
def analysed(tmp_path_factory, fashion_mnist_dir):
    root = tmp_path_factory.mktemp('runs')
    checkpoints = [save_run(str(root / 'first'), 0), save_run(str(root / 'second'), 1)]
    output = root / 'figure4'
    argv = ['--dataset', 'torch/fashion_mnist', '--data-dir', fashion_mnist_dir, '--output', str(output),
            '--seed', '3', '--no-progress', '-b', '100']
    for path in checkpoints:
        argv += ['--checkpoint', path]
    assert analyze.main(argv) == 0
    with open(output / 'figure4.csv') as f:
        rows = list(csv.DictReader(f))
    meta = json.loads((output / 'figure4.json').read_text())
    return checkpoints, output, rows, meta, fashion_mnist_dir


def test_images_are_one_per_class_and_seeded(analysed, fashion_mnist_dir):
    _, _, _, meta, _ = analysed
    labels = read_idx_gz(os.path.join(fashion_mnist_dir, 't10k-labels-idx1-ubyte.gz'), 8)
    chosen = meta['runs'][0]['image_indices']
    assert [int(labels[i]) for i in chosen] == list(range(10))
    assert meta['runs'][1]['image_indices'] == chosen  # the same images for every checkpoint
    assert meta['runs'][0]['mean'] == [MEAN] and meta['runs'][0]['input_size'] == [1, 28, 28]  # from args.yaml


@functools.lru_cache(maxsize=None)
def read_idx_gz(path, offset):
    with gzip.open(path, 'rb') as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


@functools.lru_cache(maxsize=None)
def independent(checkpoint, indices, data_dir, lam):
    """Squared norms of the pooled features and logit_a - logit_b over all ordered pairs, by hand."""
    model = timm.create_model('resnet20_cifar', num_classes=10, in_chans=1)
    model.load_state_dict(torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict'])
    model.eval()
    pixels = read_idx_gz(os.path.join(data_dir, 't10k-images-idx3-ubyte.gz'), 16).reshape(-1, 28, 28)
    x = (torch.tensor(pixels[list(indices)], dtype=torch.float64) / 255 - MEAN) / STD
    pairs = [(a, b) for a in range(10) for b in range(10) if a != b]
    mixed = torch.stack([lam * x[a] + (1 - lam) * x[b] for a, b in pairs]).unsqueeze(1).float()
    with torch.no_grad():
        r = model.forward_features(mixed).mean(dim=(2, 3)).double()
    scores = r @ model.fc.weight.double().T + model.fc.bias.double()
    norm = r.pow(2).sum(1)
    diff = torch.stack([scores[i, a] - scores[i, b] for i, (a, b) in enumerate(pairs)])
    return norm, diff, r, scores


@pytest.mark.parametrize('run_index, lam', [(0, 0.3), (0, 1.0), (1, 0.5)])
def test_csv_matches_plain_torch(analysed, run_index, lam):
    checkpoints, _, rows, meta, data_dir = analysed
    run = meta['runs'][run_index]
    row = next(r for r in rows if r['label'] == run['label'] and float(r['lambda']) == lam)
    norm, diff, _, _ = independent(checkpoints[run_index], tuple(run['image_indices']), data_dir, lam)
    assert int(row['pairs']) == 90
    assert float(row['norm_mean']) == pytest.approx(norm.mean().item(), rel=1e-5)
    assert float(row['norm_std']) == pytest.approx(norm.std(unbiased=False).item(), rel=1e-4)
    assert float(row['diff_mean']) == pytest.approx(diff.mean().item(), rel=1e-5, abs=1e-5)
    assert float(row['diff_std']) == pytest.approx(diff.std(unbiased=False).item(), rel=1e-4)


def test_lambda_ends_are_the_unmixed_images(analysed):
    checkpoints, _, rows, meta, data_dir = analysed
    run = meta['runs'][0]
    _, _, r, scores = independent(checkpoints[0], tuple(run['image_indices']), data_dir, 1.0)
    # At lambda = 1 the image of pair (a, b) is x_a: rows 9a .. 9a+8 all hold image a.
    single = r[::9].pow(2).sum(1)
    at = {float(x['lambda']): x for x in rows if x['label'] == run['label']}
    assert float(at[1.0]['norm_mean']) == pytest.approx(single.mean().item(), rel=1e-5)
    assert float(at[0.0]['norm_mean']) == pytest.approx(single.mean().item(), rel=1e-5)
    single_scores = scores[::9]
    margin = [single_scores[a, a] - single_scores[a, b] for a in range(10) for b in range(10) if a != b]
    assert float(at[1.0]['diff_mean']) == pytest.approx(torch.stack(margin).mean().item(), rel=1e-5)
    assert float(at[0.0]['diff_mean']) == pytest.approx(-torch.stack(margin).mean().item(), rel=1e-5)
    assert float(at[0.5]['diff_mean']) == pytest.approx(0.0, abs=1e-6)  # ordered pairs: antisymmetric
    assert float(at[0.0]['norm_rel']) == pytest.approx(1.0)


def test_pngs_written_and_small(analysed):
    _, output, _, _, _ = analysed
    for name in ('figure4_first.png', 'figure4_second.png', 'figure4_comparison.png'):
        path = output / name
        assert path.is_file() and path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        assert path.stat().st_size < 200_000


def one_line_error(capsys, argv, expected):
    assert analyze.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('python -m timm_icm.analyze: error: ') and expected in err[0], err


def test_errors(analysed, capsys, tmp_path):
    checkpoints, _, _, _, data_dir = analysed
    common = ['--data-dir', data_dir, '--output', str(tmp_path), '--no-plot', '--no-progress']
    one_line_error(capsys, ['--checkpoint', str(tmp_path / 'nope.pth.tar'), '--dataset', 'torch/fashion_mnist',
                            *common], 'nope.pth.tar: does not exist')
    one_line_error(capsys, ['--checkpoint', checkpoints[0], '--dataset', 'torch/nonexistent', *common],
                   "unknown dataset 'torch/nonexistent'")
    one_line_error(capsys, ['--checkpoint', checkpoints[0], '--dataset', 'torch/fashion_mnist', '--data-dir',
                            str(tmp_path / 'nowhere'), '--output', str(tmp_path), '--no-plot'], 'does not exist')
    one_line_error(capsys, ['--checkpoint', checkpoints[0], '--dataset', 'torch/fashion_mnist', '--model',
                            'resnet32_cifar', *common], 'does not match the checkpoint, trained as resnet20_cifar')
    one_line_error(capsys, ['--checkpoint', checkpoints[0], '--dataset', 'torch/fashion_mnist', '--num-classes',
                            '5', *common], 'does not fit model resnet20_cifar')
