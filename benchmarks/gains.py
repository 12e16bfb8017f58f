"""What ICM gains: the paper's comparisons at CPU scale, through train_icm.py and hparams/cpu/.

    python benchmarks/gains.py [--quick] [--seeds 5] [--jobs 2] [--out benchmarks/results]

Every run is a real ``train_icm.py`` run (``-c hparams/cpu/fmnist_resnet20.yaml -c SETTING -c METHOD
--seed S --subset-seed S``), so the methods of one seed share the training subset and the
initialisation: IC-X minus X is a paired difference. Writes ``gains.csv`` (one row per run),
``gains.md`` (mean +- std per cell, paired differences with 95 % t-intervals, the paper's deltas
beside them) and ``gains.png``.
"""
import argparse
import csv
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

from stats import level_panels, mean_std, paired_diffs, paired_interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HPARAMS = os.path.join(ROOT, 'hparams')
BASE = os.path.join(HPARAMS, 'cpu', 'fmnist_resnet20.yaml')

# Setting name -> (config file under hparams/cpu/, extra flags, what it mirrors in the paper)
SETTINGS = {
    '10/class': ('spc10.yaml', [], 'data-constrained (ciFAIR, Table 2 left; 10 % CIFAR)'),
    '50/class': ('spc50.yaml', [], 'data-constrained (ciFAIR-10 DEIC: 50/class, Table 2 middle)'),
    'LT 0.1': ('lt.yaml', ['--imbalance-ratio', '0.1'], 'LT-CIFAR imbalance 0.1 (Table 2 right)'),
    'LT 0.01': ('lt.yaml', ['--imbalance-ratio', '0.01'], 'LT-CIFAR imbalance 0.01 (Table 2 right)'),
}
# Method name -> (config file under hparams/methods/, extra flags)
METHODS = {
    'ERM': ('erm.yaml', []),
    'Mixup': ('mixup.yaml', []),
    'IC-Mixup': ('icmixup.yaml', []),
    'IC-Mixup (class)': ('icmixup_class.yaml', []),
    'IC-Mixup (pair)': ('icmixup_pair.yaml', []),
    'IC-Mixup (merge)': ('icmixup.yaml', ['--icm-duplicates', 'merge']),
    'RegMixup': ('regmixup.yaml', []),
    'IC-RegMixup': ('icregmixup.yaml', []),
    'Remix': ('remix.yaml', []),
    'IC-Remix': ('icremix.yaml', []),
    # Half the batches unmixed (--mixup-prob 0.5, batch mode): what should ICM do with them?
    'Mixup p=0.5': ('mixup.yaml', ['--mixup-prob', '0.5']),
    'IC-Mixup p=0.5 (unmixed ce)': ('icmixup.yaml', ['--mixup-prob', '0.5', '--icm-unmixed', 'ce']),
    'IC-Mixup p=0.5 (unmixed icm)': ('icmixup.yaml', ['--mixup-prob', '0.5', '--icm-unmixed', 'icm']),
    # Ablation: the batch contrast alone, never mixing (every batch unmixed, contrasted all the same).
    'ICM contrast, no mixing': ('icmixup.yaml', ['--mixup-prob', '0', '--icm-unmixed', 'icm']),
}
BALANCED_ONLY = {'RegMixup', 'IC-RegMixup'}  # the paper pairs RegMixup with the balanced/constrained sets
LONG_TAIL_ONLY = {'Remix', 'IC-Remix'}  # Remix equals Mixup on balanced data
PAIRS = [('IC-Mixup', 'Mixup'), ('IC-Mixup (class)', 'Mixup'), ('IC-Mixup (pair)', 'Mixup'),
         ('IC-Mixup (merge)', 'Mixup'), ('IC-Mixup (merge)', 'IC-Mixup'), ('IC-RegMixup', 'RegMixup'),
         ('IC-Remix', 'Remix'), ('Mixup', 'ERM'), ('IC-Mixup p=0.5 (unmixed ce)', 'Mixup p=0.5'),
         ('IC-Mixup p=0.5 (unmixed icm)', 'Mixup p=0.5'),
         ('IC-Mixup p=0.5 (unmixed icm)', 'IC-Mixup p=0.5 (unmixed ce)'),
         ('ICM contrast, no mixing', 'ERM'), ('IC-Mixup', 'ICM contrast, no mixing')]
# The paper's deltas (accuracy points) for the comparison each setting mirrors.
PAPER_DELTAS = {
    ('IC-Mixup', 'Mixup'): 'Table 1 right, CIFAR-100: +0.57 (100 %), +0.50 (50 %), +0.80 (25 %), +1.98 (10 %); '
                           'ciFAIR-10 +1.40, ciFAIR-100 -0.72; LT-CIFAR-10 +0.26 (0.1), +3.99 (0.01); '
                           'LT-CIFAR-100 +1.62 (0.1), +4.10 (0.01)',
    ('IC-RegMixup', 'RegMixup'): 'Figure 3, CIFAR-100: +0.84 (100 %) ... +7.07 (10 %); ciFAIR-10 +2.37, '
                                 'ciFAIR-100 +0.12',
    ('IC-Remix', 'Remix'): 'Table 2 right: LT-CIFAR-10 +0.67 (0.1), +6.63 (0.01); '
                           'LT-CIFAR-100 +3.20 (0.1), +5.97 (0.01)',
    ('Mixup', 'ERM'): 'Table 1 right, CIFAR-100: +0.81 (100 %) ... +1.66 (10 %)',
}
QUICK_SETTINGS = ['10/class', 'LT 0.01']
QUICK_METHODS = ['ERM', 'Mixup', 'IC-Mixup', 'Remix', 'IC-Remix']


def plan(settings: Sequence[str], methods: Sequence[str], seeds: int) -> List[Tuple[str, str, int]]:
    runs = []
    for seed in range(seeds):
        for setting in settings:
            long_tail = setting.startswith('LT')
            for method in methods:
                if (long_tail and method in BALANCED_ONLY) or (not long_tail and method in LONG_TAIL_ONLY):
                    continue
                runs.append((setting, method, seed))
    return runs


def run_one(job: Tuple[str, str, int, str]) -> Dict:
    """One train_icm.py run in this worker process; returns its last summary row."""
    setting, method, seed, out = job
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, ROOT)
    import contextlib
    import io

    import train_icm
    setting_file, setting_flags = SETTINGS[setting][:2]
    method_file, method_flags = METHODS[method]
    name = f'{setting}-{method}-{seed}'.replace('/', '_').replace(' ', '_').replace('(', '').replace(')', '')
    argv = ['-c', BASE, '-c', os.path.join(HPARAMS, 'cpu', setting_file),
            '-c', os.path.join(HPARAMS, 'methods', method_file), *setting_flags, *method_flags,
            '--seed', str(seed), '--subset-seed', str(seed), '--output', out, '--experiment', name]
    start = time.time()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        code = train_icm.main(argv)
    if code != 0:
        raise RuntimeError(f'train_icm.py {" ".join(argv)} exited {code}:\n{log.getvalue()[-2000:]}')
    with open(os.path.join(out, name, 'summary.csv'), newline='') as f:
        last = list(csv.DictReader(f))[-1]
    return dict(setting=setting, method=method, seed=seed, top1=float(last['eval_top1']),
                ece=float(last['eval_ece']), seconds=time.time() - start)


def paired(rows: List[Dict], setting: str, a: str, b: str) -> str:
    by_seed = {(r['method'], r['seed']): r['top1'] for r in rows if r['setting'] == setting}
    return paired_interval(paired_diffs(by_seed, a, b))


def report(rows: List[Dict], settings: Sequence[str], methods: Sequence[str], seeds: int, minutes: float) -> str:
    lines = [f'Fashion-MNIST, resnet20_cifar, {seeds} seeds per cell (seed = init and subset), '
             f'{len(rows)} runs in {minutes:.1f} min on {os.cpu_count()} cores. Test top-1 % (mean ± std).', '',
             '| method | ' + ' | '.join(settings) + ' |', '|---|' + '---|' * len(settings)]
    for method in methods:
        cells = [mean_std([r['top1'] for r in rows if r['setting'] == s and r['method'] == method])
                 for s in settings]
        if any(c != '-' for c in cells):
            lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'Paired differences (accuracy points, mean and 95 % t-interval over seeds):', '',
              '| comparison | ' + ' | '.join(settings) + ' | paper |', '|---|' + '---|' * (len(settings) + 1)]
    for a, b in PAIRS:
        if a in methods and b in methods:
            cells = [paired(rows, s, a, b) for s in settings]
            if any(c != '-' for c in cells):
                lines.append(f'| {a} − {b} | ' + ' | '.join(cells) + f' | {PAPER_DELTAS.get((a, b), "")} |')
    lines += ['', 'Settings: ' + '; '.join(f'{s}: {SETTINGS[s][2]}' for s in settings) + '.',
              '', 'Expected calibration error (%, 15 bins, mean over seeds):', '',
              '| method | ' + ' | '.join(settings) + ' |', '|---|' + '---|' * len(settings)]
    for method in methods:
        cells = [[r['ece'] for r in rows if r['setting'] == s and r['method'] == method] for s in settings]
        if any(cells):
            lines.append(f'| {method} | ' + ' | '.join(f'{statistics.mean(c):.1f}' if c else '-' for c in cells)
                         + ' |')
    return '\n'.join(lines)


def plot(rows: List[Dict], settings: Sequence[str], methods: Sequence[str], path: str) -> bool:
    return level_panels({s: {m: [r['top1'] for r in rows if r['setting'] == s and r['method'] == m] for m in methods}
                         for s in settings}, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help=f'{QUICK_SETTINGS} x {QUICK_METHODS}, 2 seeds')
    parser.add_argument('--seeds', type=int, default=5)
    parser.add_argument('--jobs', type=int, default=2, help='parallel runs (one thread each)')
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results'))
    parser.add_argument('--name', help='file stem of the results (default: gains, gains-quick, or '
                                       'gains-selection for chosen settings/methods)')
    args = parser.parse_args(argv)
    settings, methods, seeds = args.settings, args.methods, args.seeds
    if args.quick:
        settings, methods, seeds = QUICK_SETTINGS, QUICK_METHODS, min(seeds, 2)
    runs = plan(settings, methods, seeds)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix='icm-gains-') as scratch:
        jobs = [(s, m, seed, scratch) for s, m, seed in runs]
        with mp.get_context('spawn').Pool(args.jobs) as pool:
            for i, row in enumerate(pool.imap_unordered(run_one, jobs), 1):
                rows.append(row)
                eta = (time.time() - start) / i * (len(jobs) - i) / 60
                print(f'[{i}/{len(jobs)}] {row["setting"]:>8} {row["method"]:<28} seed {row["seed"]}: '
                      f'top-1 {row["top1"]:.2f} ({row["seconds"]:.0f} s; ~{eta:.1f} min left)', flush=True)
    minutes = (time.time() - start) / 60
    rows.sort(key=lambda r: (list(SETTINGS).index(r['setting']), list(METHODS).index(r['method']), r['seed']))
    stem = args.name or ('gains-quick' if args.quick else 'gains' if (methods, settings) == (
        list(METHODS), list(SETTINGS)) else 'gains-selection')
    with open(os.path.join(args.out, f'{stem}.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = report(rows, settings, methods, seeds, minutes)
    command = 'python benchmarks/gains.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    with open(os.path.join(args.out, f'{stem}.md'), 'w') as f:
        f.write(f'Command: `{command.strip()}`\n\n{table}\n')
    plotted = plot(rows, settings, methods, os.path.join(args.out, f'{stem}.png'))
    print('\n' + table)
    print(f'\nWrote {stem}.csv, {stem}.md' + (f', {stem}.png' if plotted else '') + f' to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
