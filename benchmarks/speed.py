"""How fast a CIFAR training step runs on one CPU thread: the long recipe's choices, measured before its hours.

    OMP_NUM_THREADS=1 python benchmarks/speed.py [--rounds 5] [--steps 8] [--data-dir data] [--out benchmarks/results]

ResNet-20 at 32x32, batch 128, LT-CIFAR-10 0.01 with the paper's augmentation and IC-Mixup (the long recipe's
first block), in images per second of:

1. the loader alone: today's (a PIL image per sample through crop, flip and rotation, timm's fast collate and
   the mixer), against the same augmentation on a batch of uint8 tensors (one affine ``grid_sample`` per batch);
2. the training step alone (forward, ICM loss, backward, SGD) on a fixed batch: eager, channels-last,
   ``torch.compile`` (inductor), both, and bfloat16 autocast (for scale only: it changes the arithmetic);
3. the whole step (loader and step) as ``train_icm.py`` runs it: eager against compiled.

The variants take turns within each round, so that the machine's drift hits all of them alike; each figure is
the median over the rounds, and each ratio the median of the per-round ratios to the first variant of its
table. Writes ``speed.md`` and ``speed.csv`` into ``--out``.

``--ladder`` measures instead each network of the capacity ladder (benchmarks/cifar.py, block C1: CIFAR-10 with 50
images per class): the training step alone (eager, channels-last, ``torch.compile``, both) and the test-set forward
pass (eager, compiled), and writes ``speed-ladder.md``: what a 200-epoch run of each costs.

``--allocators`` measures instead the compiled whole step under each memory allocator (glibc's malloc, tcmalloc,
jemalloc through ``LD_PRELOAD``), one process per allocator and round, taking turns; it writes
``speed-allocator.md``. An allocator only places the same tensors elsewhere in memory: the arithmetic is the same.
"""
import argparse
import csv
import ctypes.util
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import timm  # noqa: E402
import train_icm  # noqa: E402
from timm.data import resolve_data_config  # noqa: E402
from timm_icm import cli  # noqa: E402
from timm_icm.factory import create_mixer, create_train_loss  # noqa: E402
from timm_icm.mixup import InfiniteClassMixup  # noqa: E402

from cifar import splice_page  # noqa: E402
from stats import cpu_name, git_commit  # noqa: E402

BATCH = 128
# Allocators to preload, by the name ctypes.util.find_library knows them (Debian: libtcmalloc-minimal4, libjemalloc2).
ALLOCATORS = {"glibc malloc (default)": None, 'tcmalloc': 'tcmalloc_minimal', 'jemalloc': 'jemalloc'}


def recipe_args(data_dir: str):
    argv = ['-c', os.path.join(ROOT, 'hparams', 'cpu', 'cifar10_resnet20.yaml'),
            '-c', os.path.join(ROOT, 'hparams', 'long', 'schedule.yaml'),
            '-c', os.path.join(ROOT, 'hparams', 'methods', 'icmixup.yaml'),
            '--imbalance-ratio', '0.01', '--data-dir', data_dir, '--seed', '0']
    args, _ = cli.parse_args(argv)
    args.prefetcher, args.distributed, args.world_size, args.rank = True, False, 1, 0
    return args


def endless(loader) -> Iterator:
    while True:
        yield from loader


class BatchAugment:
    """The paper's augmentation on a batch of uint8 images: random crop with zero padding 4, horizontal flip,
    rotation within +-15 degrees (nearest), as one affine map per image and one ``grid_sample``."""

    def __init__(self, images: torch.Tensor, mean, std, padding: int = 4, degrees: float = 15.0):
        self.images, self.padding, self.degrees = images, padding, degrees  # [N, 3, H, W] uint8
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        x = self.images[index].float()
        n, _, h, w = x.shape
        angle = (torch.rand(n) * 2 - 1) * math.radians(self.degrees)
        flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
        shift = torch.randint(-self.padding, self.padding + 1, (n, 2)).float() * 2 / torch.tensor([w, h])
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                             torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode='nearest', padding_mode='zeros', align_corners=False)
        return (x - self.mean) / self.std


def step_fn(model: torch.nn.Module, loss_fn, channels_last: bool = False, bf16: bool = False) -> Callable:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def new_model(compile_: bool = False, channels_last: bool = False, name: str = 'resnet20_cifar') -> torch.nn.Module:
    model = timm.create_model(name, num_classes=10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_ else model


def rate(work: Callable[[], None], steps: int, batch: int = BATCH) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        work()
    return steps * batch / (time.perf_counter() - start)


def measure(variants: Dict[str, Callable[[], None]], rounds: int, steps: int,
            batch: int = BATCH) -> Dict[str, Tuple[float, float]]:
    """Each variant's median images/s over the rounds and its median per-round ratio to the first variant."""
    for work in variants.values():  # warm-up (and compilation)
        for _ in range(3):
            work()
    rates: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, work in variants.items():
            rates[name].append(rate(work, steps, batch))
    first = rates[next(iter(rates))]
    return {name: (statistics.median(r), statistics.median(a / b for a, b in zip(r, first)))
            for name, r in rates.items()}


def whole_step(data_dir: str) -> Tuple[Callable[[], None], Dict]:
    """One training step as train_icm.py's long recipe runs it (loader, mixer, ICM loss, SGD), and the pieces
    the step-alone variants need."""
    config = recipe_args(data_dir)
    train_set, _, counts = train_icm.build_datasets(config)
    data_config = resolve_data_config(vars(config), model=new_model())
    collate = create_mixer(config, 10, counts, collate=True)
    loader, _ = train_icm.build_loaders(config, data_config, train_set, None, collate, torch.device('cpu'))
    loss_fn = create_train_loss(config, counts)
    batches = endless(loader)
    step = step_fn(new_model(compile_=True), loss_fn)
    parts = dict(config=config, train_set=train_set, data_config=data_config, loss_fn=loss_fn, batches=batches)
    return (lambda: step(*next(batches))), parts


def allocator_table(args) -> Tuple[List[str], List[Dict]]:
    """The compiled whole step under each allocator: one child process per allocator and round, taking turns."""
    found = {name: (ctypes.util.find_library(lib) if lib else '') for name, lib in ALLOCATORS.items()}
    rates: Dict[str, List[float]] = {name: [] for name, lib in found.items() if lib is not None}
    for _ in range(args.rounds):
        for name in rates:
            env = dict(os.environ, OMP_NUM_THREADS='1', LD_PRELOAD=found[name])
            child = subprocess.run([sys.executable, os.path.abspath(__file__), '--child-whole-step', '--steps',
                                    str(args.steps), '--data-dir', args.data_dir], env=env, capture_output=True,
                                   text=True)
            if child.returncode != 0:
                sys.exit(f'speed.py: the whole step with {name} failed: {child.stderr.strip().splitlines()[-1:]}')
            rates[name].append(float(child.stdout.split()[-1]))
    first = rates[next(iter(rates))]
    lines = ['| allocator | images/s | ratio |', '|---|---|---|']
    rows = []
    for name, r in rates.items():
        ratio = statistics.median(a / b for a, b in zip(r, first))
        lines.append(f'| {name} | {statistics.median(r):.0f} | {ratio:.2f} |')
        rows.append({'table': 'whole step, allocator', 'variant': name, 'images_per_s': round(statistics.median(r), 1),
                     'ratio': round(ratio, 3)})
    lines += [f'| {name} | - | not installed |' for name, lib in found.items() if lib is None]
    return lines, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--steps', type=int, default=8, help='batches per variant and round')
    parser.add_argument('--allocators', action='store_true',
                        help='only the compiled whole step under each memory allocator (speed-allocator.md)')
    parser.add_argument('--ladder', nargs='*', default=None, metavar='MODEL',
                        help='only the capacity ladder\'s networks (default: resnet20_cifar wrn16_4_cifar '
                             'resnet34_cifar): '
                             'training step and test forward pass, speed-ladder.md')
    parser.add_argument('--child-whole-step', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--data-dir', default=os.path.join(ROOT, 'data'))
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results'))
    parser.add_argument('--readme', default=None,
                        help='also put the table into this Markdown page, between <!-- speed.md --> and '
                             '<!-- /speed.md --> (docs/cifar.md; <!-- speed-allocator.md --> with --allocators)')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if not os.path.exists(os.path.join(args.data_dir, 'cifar-10-batches-py')):
        print(f'speed.py: no CIFAR-10 in {args.data_dir}: run `make data` first', file=sys.stderr)
        return 2
    if args.child_whole_step:
        work, _ = whole_step(args.data_dir)
        for _ in range(3):  # warm-up and compilation
            work()
        print(f'{statistics.median(rate(work, args.steps) for _ in range(3)):.2f}')
        return 0
    commit, device = git_commit(ROOT), cpu_name()
    if args.ladder is not None:
        stem = 'speed-ladder'
        lines, rows = ladder_tables(args, args.ladder or list(LADDER), commit, device)
    elif args.allocators:
        stem = 'speed-allocator'
        table, rows = allocator_table(args)
        lines = [f'Made by `python benchmarks/speed.py --allocators --rounds {args.rounds} --steps {args.steps}`.', '',
                 f'The long recipe\'s compiled whole step (ResNet-20, 32x32, batch {BATCH}, LT-CIFAR-10 0.01 with '
                 f'IC-Mixup, one thread) under each allocator, preloaded with `LD_PRELOAD`; commit {commit}, {device}, '
                 f'torch {torch.__version__}. One process per allocator and round, taking turns; images/s: the median '
                 f'over {args.rounds} rounds of each process\'s median of 3 x {args.steps} batches; ratio: the median '
                 f'per-round ratio to the first row.', ''] + table
    else:
        stem = 'speed'
        lines, rows = step_tables(args, commit, device)
    for row in rows:
        row.update(commit=commit, device=device)
    text = '\n'.join(lines) + '\n'
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f'{stem}.md'), 'w') as f:
        f.write(text)
    with open(os.path.join(args.out, f'{stem}.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if args.readme:
        splice_page(args.readme, stem, text)
    return 0


# The capacity ladder's networks (benchmarks/cifar.py, block C1).
LADDER = ('resnet20_cifar', 'wrn16_4_cifar', 'resnet34_cifar')
EVAL_BATCH = 500  # the CIFAR bases' validation_batch_size


def ladder_tables(args, models: List[str], commit: str, device: str) -> Tuple[List[str], List[Dict]]:
    """Per network: the training step alone on a fixed IC-Mixup batch (eager, channels-last, compiled, both) and
    the test forward pass (eager, compiled); the variants of one network take turns in every round."""
    _, parts = whole_step(args.data_dir)
    loss_fn, (x, y) = parts['loss_fn'], next(parts['batches'])
    test_x = torch.randn(EVAL_BATCH, 3, 32, 32)
    lines = [f'Made by `OMP_NUM_THREADS=1 python benchmarks/speed.py --ladder {" ".join(models)} --rounds '
             f'{args.rounds} --steps {args.steps}`.', '',
             f'The capacity ladder\'s networks at 32x32, one thread; training step: batch {BATCH}, IC-Mixup; test '
             f'forward: batch {EVAL_BATCH}, no gradient. Commit {commit}, {device}, torch {torch.__version__}. '
             f'Median over {args.rounds} rounds of {args.steps} batches; ratio: the median per-round ratio to the '
             'first row of the network\'s table.', '',
             '| network | parameters | what | variant | images/s | ratio |', '|---|---|---|---|---|---|']
    rows = []
    for name in models:
        params = sum(p.numel() for p in new_model(name=name).parameters())
        steps = {'eager': step_fn(new_model(name=name), loss_fn),
                 'channels-last': step_fn(new_model(channels_last=True, name=name), loss_fn, channels_last=True),
                 'torch.compile': step_fn(new_model(compile_=True, name=name), loss_fn),
                 'torch.compile + channels-last': step_fn(new_model(True, True, name=name), loss_fn,
                                                          channels_last=True)}
        forwards = {'eager': new_model(name=name).eval(), 'torch.compile': new_model(compile_=True, name=name).eval()}

        def forward(model):
            with torch.no_grad():
                model(test_x)
        tables = {
            'training step': measure({v: (lambda s=s: s(x, y)) for v, s in steps.items()}, args.rounds, args.steps),
            'test forward': measure({v: (lambda m=m: forward(m)) for v, m in forwards.items()}, args.rounds,
                                    args.steps, EVAL_BATCH),
        }
        for table, results in tables.items():
            for variant, (per_second, ratio) in results.items():
                lines.append(f'| {name} | {params / 1e6:.2f} M | {table} | {variant} | {per_second:.1f} '
                             f'| {ratio:.2f} |')
                rows.append({'table': f'{name} {table}', 'variant': variant, 'images_per_s': round(per_second, 2),
                             'ratio': round(ratio, 3)})
    return lines, rows


def step_tables(args, commit: str, device: str) -> Tuple[List[str], List[Dict]]:
    """The loader, the step alone and the whole step: each table's variants take turns in every round."""
    whole_compiled, parts = whole_step(args.data_dir)
    config, train_set, data_config = parts['config'], parts['train_set'], parts['data_config']
    loss_fn, batches = parts['loss_fn'], parts['batches']
    images = torch.from_numpy(train_set.dataset.data[train_set.indices]).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor([train_set.dataset.targets[i] for i in train_set.indices])
    augment = BatchAugment(images, data_config['mean'], data_config['std'])
    mixer = InfiniteClassMixup(mixup_alpha=config.mixup, mode='batch', num_classes=10, label_smoothing=0.0)

    def tensor_batch():
        index = torch.randint(len(labels), (BATCH,))
        return mixer(augment(index), labels[index])

    x, y = next(batches)
    steps = {'eager': step_fn(new_model(), loss_fn),
             'channels-last': step_fn(new_model(channels_last=True), loss_fn, channels_last=True),
             'torch.compile': step_fn(new_model(compile_=True), loss_fn),
             'torch.compile + channels-last': step_fn(new_model(True, True), loss_fn, channels_last=True),
             'bfloat16 autocast (changes the arithmetic)': step_fn(new_model(), loss_fn, bf16=True)}
    eager = step_fn(new_model(), loss_fn)
    tables = {
        'loader alone': measure({'PIL per image (today)': lambda: next(batches),
                                 'uint8 tensors, augmentation on the batch': tensor_batch}, args.rounds, args.steps),
        'training step alone': measure({name: (lambda s=s: s(x, y)) for name, s in steps.items()},
                                       args.rounds, args.steps),
        'whole step (loader + step)': measure({'eager (cpu recipe)': lambda: eager(*next(batches)),
                                               'torch.compile (long recipe)': whole_compiled},
                                              args.rounds, args.steps),
    }
    lines = [f'Made by `OMP_NUM_THREADS=1 python benchmarks/speed.py --rounds {args.rounds} --steps {args.steps}`.', '',
             f'ResNet-20, 32x32, batch {BATCH}, LT-CIFAR-10 0.01 with IC-Mixup, one thread; commit '
             f'{commit}, {device}, torch {torch.__version__}. Median over {args.rounds} rounds of '
             f'{args.steps} batches; ratio: the median per-round ratio to the first row of its table.', '',
             '| what | variant | images/s | ratio |', '|---|---|---|---|']
    rows = []
    for table, results in tables.items():
        for name, (per_second, ratio) in results.items():
            lines.append(f'| {table} | {name} | {per_second:.0f} | {ratio:.2f} |')
            rows.append({'table': table, 'variant': name, 'images_per_s': round(per_second, 1),
                         'ratio': round(ratio, 3)})
    return lines, rows


if __name__ == '__main__':
    sys.exit(main())
