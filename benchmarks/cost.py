"""What ICM costs: ICM vs Mixup + SoftTargetCrossEntropy, interleaved in one process, medians.

    python benchmarks/cost.py [--quick] [--device cuda] [--amp] [--channels-last] [--out benchmarks/results]

1. The whole training step (forward, loss, backward, SGD step) of a few models, ICM vs Mixup
   (on an accelerator: ResNet-34 CIFAR at B=128 and ViT-S at B=256, e.g. with --amp --channels-last):
   the two losses alternate step by step on the same model and batch, so drift in the machine's
   speed hits both alike; the ratio is the median of the per-round ratios. A second Mixup step in
   the same rotation is the control: its ratio to the first shows the timing noise. The two losses
   alone on the step's own logits give what ICM adds to the step without that noise. Target:
   ICM / Mixup <= 1.02.
2. The loss alone, forward + backward, targets from timm's Mixup with label smoothing:
   SoftTargetCrossEntropy vs ICM (automatic: the path the loss picks for the size) vs ICM with the
   dense score matrix vs ICM with the sparse one.
   Targets: <= 1.5x where C >> B, <= 3x where B >= C. ``--compare-with COMMIT`` adds the loss as
   that commit wrote it to the same rotation: a before/after that the machine's drift cannot bias.
3. Memory: what each loss keeps for its backward (bytes of saved tensors), and ICM's excess over
   SoftTargetCrossEntropy in units of B^2 floats (negative: ICM keeps less).

Prints markdown tables and writes them to ``--out``/cost.md and cost.csv (``--name`` renames them,
e.g. ``--skip-steps --name cost-loss`` for the loss table alone; a device suffix such as ``-cuda``
is added off the CPU).
"""
import argparse
import csv
import importlib
import os
import platform
import statistics
import re
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import timm  # noqa: E402
import timm_icm  # noqa: E402,F401
from timm_icm import InfiniteClassCrossEntropy  # noqa: E402
from timm_icm.loss_fast import sparse_pays_off  # noqa: E402

STEP_CASES = [  # (model, kwargs, image size, batch, classes)
    ('resnet20_cifar', {}, 32, 128, 10),
    ('resnet20_cifar', {}, 32, 128, 100),
    ('resnet18_cifar', {}, 32, 128, 10),
    ('resnet18_cifar', {}, 32, 128, 100),
    ('vit_tiny_patch16_224', dict(img_size=32, patch_size=4), 32, 128, 1000),
]
GPU_STEP_CASES = [  # the accelerator cases, synthetic data
    ('resnet34_cifar', {}, 32, 128, 10),
    ('resnet34_cifar', {}, 32, 128, 100),
    ('vit_small_patch16_224', dict(img_size=32, patch_size=4), 32, 256, 100),
    ('vit_small_patch16_224', dict(img_size=32, patch_size=4), 32, 256, 1000),
]
LOSS_CASES = [(128, 100), (128, 1000), (128, 21843), (1024, 100), (1024, 1000), (1024, 21843)]


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def mixed_targets(batch, classes, device, seed=0):
    np.random.seed(seed)
    labels = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed))
    mixer = Mixup(mixup_alpha=0.2, mode='elem', label_smoothing=0.1, num_classes=classes)
    return mixer(torch.zeros(batch, 1, 1, 1), labels)[1].to(device)


def time_interleaved(fns, repeats, warmup, device, inner=1):
    """Seconds per call of each callable in each of ``repeats`` rounds after ``warmup`` rounds.

    In each round every callable runs once untimed (its memory is then allocated and warm, as in
    a training loop) and then ``inner`` times timed. The callables take turns, and the order turns
    by one each round, so that none always runs first: on these machines the first place of a
    rotation measured up to 5 % faster than the others.
    """
    times = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for k in range(len(fns)):
            i = (round_ + k) % len(fns)
            fns[i]()
            sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fns[i]()
            sync(device)
            if round_ >= warmup:
                times[i].append((time.perf_counter() - start) / inner)
    return times


def median_ratio(numerators, denominators):
    """Median over rounds of the per-round ratio: paired, so drift of the machine's speed cancels."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def step_benchmark(args, device):
    rows = []
    for name, kwargs, size, batch, classes in (STEP_CASES if device.type == 'cpu' else GPU_STEP_CASES):
        if args.quick and name != 'resnet20_cifar':
            continue
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=classes, **kwargs).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x = torch.randn(batch, 3, size, size, device=device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = mixed_targets(batch, classes, device)
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext

        def step(loss_fn):
            def run():
                with autocast():
                    loss = loss_fn(model(x), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return run

        inner = args.step_inner or (1 if device.type == 'cpu' else 20)  # one GPU step is too short to time
        # A second, identical Mixup step is the control: its ratio to the first is the timing noise.
        mixup, icm, control = time_interleaved(
            [step(SoftTargetCrossEntropy()), step(InfiniteClassCrossEntropy()), step(SoftTargetCrossEntropy())],
            args.step_repeats, 1, device, inner)
        # The losses alone on this step's logits: their difference bounds what ICM can add to a step,
        # free of the step's own timing noise.
        with autocast():
            logits = model(x).detach()

        def loss_only(loss_fn):
            def run():
                with autocast():
                    loss = loss_fn(logits.requires_grad_(), target)
                loss.backward()
            return run

        ce_loss, icm_loss = time_interleaved(
            [loss_only(SoftTargetCrossEntropy()), loss_only(InfiniteClassCrossEntropy())],
            args.step_repeats, 1, device, inner=50)
        mixup_ms = 1e3 * statistics.median(mixup)
        extra_ms = 1e3 * (statistics.median(icm_loss) - statistics.median(ce_loss))
        row = dict(model=name, image=size, batch=batch, classes=classes, mixup_ms=mixup_ms,
                   icm_ms=1e3 * statistics.median(icm), ratio=median_ratio(icm, mixup),
                   control_ratio=median_ratio(control, mixup), loss_extra_ms=extra_ms,
                   loss_ratio=1 + extra_ms / mixup_ms)
        rows.append(row)
        print(f'step {name} B={batch} C={classes}: Mixup {row["mixup_ms"]:.1f} ms, ICM {row["icm_ms"]:.1f} ms, '
              f'ratio {row["ratio"]:.3f} (Mixup again: {row["control_ratio"]:.3f}); the loss alone adds '
              f'{extra_ms:.3f} ms: ratio {row["loss_ratio"]:.4f}', flush=True)
    return rows


def saved_bytes(loss_fn, logits, target):
    """Bytes of the tensors autograd keeps for the backward of ``loss_fn`` (inputs excluded)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen and t.data_ptr() not in (logits.data_ptr(), target.data_ptr()):
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(logits, target)
    return total


def peak_bytes(fn, device):
    """Peak bytes the device allocator holds during ``fn()`` above what it held before (CUDA only)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def loss_of_commit(rev):
    """``InfiniteClassCrossEntropy`` as commit ``rev`` wrote it: its ``timm_icm/loss*.py`` and
    ``distributed.py``, imported from git as a package of their own, to time before and after in
    one process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package = '_icm_loss_' + re.sub(r'\W', '_', rev)
    folder = os.path.join(tempfile.mkdtemp(), package)
    os.makedirs(folder)
    open(os.path.join(folder, '__init__.py'), 'w').close()
    for name in ('loss.py', 'loss_fast.py', 'distributed.py'):
        source = subprocess.run(['git', 'show', f'{rev}:timm_icm/{name}'], cwd=root, capture_output=True, text=True)
        if source.returncode == 0:
            with open(os.path.join(folder, name), 'w') as f:
                f.write(source.stdout)
    sys.path.insert(0, os.path.dirname(folder))
    return importlib.import_module(f'{package}.loss').InfiniteClassCrossEntropy


def loss_benchmark(args, device):
    rows = []
    before = loss_of_commit(args.compare_with) if args.compare_with else None
    for batch, classes in LOSS_CASES:
        if args.quick and batch * classes > 1024 * 1000:
            continue
        logits = torch.randn(batch, classes, device=device)
        target = mixed_targets(batch, classes, device)
        losses = {'soft_ce': SoftTargetCrossEntropy(), 'icm': InfiniteClassCrossEntropy(),
                  'icm_dense': InfiniteClassCrossEntropy(target_format='dense'),
                  'icm_sparse': InfiniteClassCrossEntropy(target_format='sparse')}
        if before:  # the same loss as some earlier commit wrote it, in the same rotation
            losses['icm_before'] = before()

        def fwd_bwd(loss_fn):
            def run():
                x = logits.detach().requires_grad_()
                loss_fn(x, target).backward()
            return run

        inner = max(3, int(1e7 // (batch * classes)))  # several calls per sample: steadier medians
        times = time_interleaved([fwd_bwd(fn) for fn in losses.values()], args.loss_repeats, 2, device, inner)
        timings = [statistics.median(t) for t in times]
        base = timings[0]
        memory = {k: saved_bytes(fn, logits.detach().requires_grad_(), target) for k, fn in losses.items()}
        assert losses['icm'].sparse_targets
        path = 'sparse' if sparse_pays_off(batch, batch, classes, device) else 'dense'  # what 'auto' takes
        row = dict(batch=batch, classes=classes, soft_ce_ms=1e3 * base, icm_path=path,
                   icm_ratio=timings[1] / base, icm_dense_ratio=timings[2] / base, icm_sparse_ratio=timings[3] / base,
                   soft_ce_saved_mib=memory['soft_ce'] / 2 ** 20, icm_saved_mib=memory['icm'] / 2 ** 20,
                   extra_saved_b2=(memory['icm'] - memory['soft_ce']) / (4 * batch * batch))
        if before:
            row.update(before_commit=args.compare_with, icm_before_ratio=timings[4] / base,
                       icm_over_before=median_ratio(times[1], times[4]))
        if device.type == 'cuda':
            peaks = {k: peak_bytes(fwd_bwd(fn), device) for k, fn in losses.items()}
            row.update(soft_ce_peak_mib=peaks['soft_ce'] / 2 ** 20, icm_peak_mib=peaks['icm'] / 2 ** 20,
                       extra_peak_b2=(peaks['icm'] - peaks['soft_ce']) / (4 * batch * batch))
        rows.append(row)
        print(f'loss B={batch} C={classes}: SoftTargetCE {row["soft_ce_ms"]:.2f} ms, ICM x{row["icm_ratio"]:.2f} '
              f'({row["icm_path"]}), dense x{row["icm_dense_ratio"]:.2f}, sparse x{row["icm_sparse_ratio"]:.2f}, '
              f'saved for backward {row["soft_ce_saved_mib"]:.2f} vs '
              f'{row["icm_saved_mib"]:.2f} MiB',
              flush=True)
    return rows


def markdown(step_rows, loss_rows, args, device):
    lines = [f'Device: {device_name(device)}; torch {torch.__version__}, timm {timm.__version__}; '
             f'threads {torch.get_num_threads()}; amp {args.amp}; channels_last {args.channels_last}; '
             f'medians of {args.step_repeats} (step) / {args.loss_repeats} (loss) interleaved repeats; '
             f'loss code of commit {loss_code_version()}.', '']
    if step_rows:
        lines += ['| model | image | B | C | Mixup step ms | ICM step ms | ICM / Mixup | control: Mixup / Mixup | '
                  'ICM loss - SoftTargetCE ms | 1 + that / Mixup step |', '|---|---|---|---|---|---|---|---|---|---|']
        lines += [f"| {r['model']} | {r['image']} | {r['batch']} | {r['classes']} | {r['mixup_ms']:.1f} | "
                  f"{r['icm_ms']:.1f} | {r['ratio']:.3f} | {r['control_ratio']:.3f} | {r['loss_extra_ms']:.3f} | "
                  f"{r['loss_ratio']:.4f} |" for r in step_rows]
        lines.append('')
    if loss_rows:
        lines += ['| B | C | SoftTargetCE fwd+bwd ms | ICM / SoftTargetCE (path chosen) | dense ICM / SoftTargetCE | '
                  'sparse ICM / SoftTargetCE | saved for backward: SoftTargetCE / ICM MiB | '
                  'ICM - SoftTargetCE (B^2 floats) |', '|---|---|---|---|---|---|---|---|']
        lines += [f"| {r['batch']} | {r['classes']} | {r['soft_ce_ms']:.2f} | {r['icm_ratio']:.2f} ({r['icm_path']}) | "
                  f"{r['icm_dense_ratio']:.2f} | {r['icm_sparse_ratio']:.2f} | "
                  f"{r['soft_ce_saved_mib']:.2f} / {r['icm_saved_mib']:.2f} | "
                  f"{r['extra_saved_b2']:+.1f} |" for r in loss_rows]
        if 'icm_before_ratio' in loss_rows[0]:
            before = loss_rows[0]['before_commit']
            lines += ['', f'| B | C | ICM of commit {before} / SoftTargetCE | ICM / SoftTargetCE | '
                          f'ICM / ICM of commit {before} (median of the paired rounds) |', '|---|---|---|---|---|']
            lines += [f"| {r['batch']} | {r['classes']} | {r['icm_before_ratio']:.2f} | {r['icm_ratio']:.2f} | "
                      f"{r['icm_over_before']:.3f} |" for r in loss_rows]
        if 'icm_peak_mib' in loss_rows[0]:
            lines += ['', '| B | C | peak allocated during fwd+bwd: SoftTargetCE / ICM MiB | '
                      'ICM - SoftTargetCE (B^2 floats) |', '|---|---|---|---|']
            lines += [f"| {r['batch']} | {r['classes']} | {r['soft_ce_peak_mib']:.2f} / {r['icm_peak_mib']:.2f} | "
                      f"{r['extra_peak_b2']:+.1f} |" for r in loss_rows]
    return '\n'.join(lines)


def loss_code_version():
    """The commit of the loss code measured, marked when its files differ from that commit."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = ['timm_icm/loss.py', 'timm_icm/loss_fast.py', 'benchmarks/cost.py']
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(['git', 'status', '--porcelain', '--', *files], cwd=root, capture_output=True,
                                 text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown (no git)'
    return commit + (' with uncommitted changes' if changed else '')


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--quick', action='store_true', help='small cases only, for a smoke run')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast for the training steps')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--step-repeats', type=int, default=7)
    parser.add_argument('--step-inner', type=int, default=0,
                        help='training steps per timed sample (default: 1 on the CPU, 20 on accelerators)')
    parser.add_argument('--loss-repeats', type=int, default=15)
    parser.add_argument('--skip-steps', action='store_true')
    parser.add_argument('--skip-loss', action='store_true')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'))
    parser.add_argument('--name', default='cost', help='file name of the results, before the device suffix')
    parser.add_argument('--compare-with', metavar='COMMIT',
                        help="also time the loss as this git commit wrote it, in the same rotation (loss table)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    loss_rows = [] if args.skip_loss else loss_benchmark(args, device)
    step_rows = [] if args.skip_steps else step_benchmark(args, device)
    table = markdown(step_rows, loss_rows, args, device)
    print('\n' + table)
    os.makedirs(args.out, exist_ok=True)
    name = args.name + ('' if device.type == 'cpu' else f'-{device.type}')
    with open(os.path.join(args.out, f'{name}.md'), 'w') as f:
        f.write(f'Command: python benchmarks/cost.py {" ".join(argv if argv is not None else sys.argv[1:])}\n\n')
        f.write(table + '\n')
    with open(os.path.join(args.out, f'{name}.csv'), 'w', newline='') as f:
        for rows in (step_rows, loss_rows):
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
