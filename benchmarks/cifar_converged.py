"""What the converged CIFAR suite (the ``long`` recipe) adds to its tables: the learning curves that show the runs
have converged, the half-schedule check, published figures at convergence, and which conclusions of the quick
suite survive. ``python benchmarks/cifar.py --report`` calls :func:`report`; this module runs nothing itself.

The learning curves (the test set every 10 epochs) are read from the run folders and kept in
``cifar-curves-long.csv``, so that they outlive the folders.
"""
import csv
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from suite import DEFAULT_MODEL, LONG_EPOCHS, is_schedule_check, row_run, run_name, summary_rows
from stats import paired_diffs, paired_interval, panel_row, t_interval

CURVE_FIELDS = ['block', 'setting', 'model', 'method', 'seed', 'epochs', 'epoch', 'eval_top1', 'train_loss', 'lr']

# Published top-1 (and ECE, 15 bins) at convergence for the same data with ResNet-32: (what was run, our method
# that ran the same loss or None, top-1 %, ECE % or None, which epoch it reports, source). The logit-adjustment
# code's README gives fractions (0.7136 ...) of its last epoch; MiSLAS's and Saddle-LongTail's training scripts log
# the best test top-1 over the epochs (MiSLAS's stage 1 is mixup alone); BagofTricks-LT gives the error, 18.65 %.
LA_SOURCE = 'google-research/google-research `logit_adjustment/README.md` (commit 21efedb)'
MISLAS_SOURCE = 'dvlab-research/MiSLAS `README.md` (commit 02d6f98)'
SAM_SOURCE = 'val-iisc/Saddle-LongTail `README.md` (commit 0bc38ad)'
TRICKS_SOURCE = 'zhangyongshun/BagofTricks-LT `documents/trick_combination.md` (commit 2704f9b)'
PUBLISHED = {
    'LT-CIFAR-10 0.01': [
        ('cross-entropy (ERM)', 'ERM', 71.36, None, 'last', LA_SOURCE),
        ('logit-adjusted loss (LA)', 'LA', 77.89, None, 'last', LA_SOURCE),
        ('mixup (MiSLAS stage 1)', 'Mixup', 72.8, 2.14, 'best', MISLAS_SOURCE),
        ('input mixup + Balanced Softmax (= LA)', None, 81.35, None, 'best', TRICKS_SOURCE),
        ('LDAM-DRW + SAM', None, 81.9, None, 'best', SAM_SOURCE),
        ('MiSLAS (mixup, then label-aware smoothing)', None, 82.5, 3.66, 'best', MISLAS_SOURCE),
    ],
    'LT-CIFAR-100 0.01': [
        ('cross-entropy (ERM)', 'ERM', 39.87, None, 'last', LA_SOURCE),
        ('logit-adjusted loss (LA)', 'LA', 44.06, None, 'last', LA_SOURCE),
        ('mixup (MiSLAS stage 1)', 'Mixup', 39.5, 8.82, 'best', MISLAS_SOURCE),
        ('MiSLAS (mixup, then label-aware smoothing)', None, 47.0, 4.83, 'best', MISLAS_SOURCE),
    ],
}


def published_top1(setting: str, method: str) -> Optional[float]:
    """The published ResNet-32 top-1 of the loss our ``method`` trains on ``setting``, or None."""
    return next((top1 for _, ours, top1, *_ in PUBLISHED.get(setting, []) if ours == method), None)


# The quick suite's conclusions, as paired differences (a − b) of a column of cifar.csv.
CONCLUSIONS = [
    ('ICM over Mixup', 'IC-Mixup', 'Mixup', 'top1'),
    ('ICM against logit adjustment', 'IC-Mixup', 'LA', 'top1'),
    ('ICM + LA over ICM', 'IC-Mixup + LA', 'IC-Mixup', 'top1'),
    ('Mixup against ERM', 'Mixup', 'ERM', 'top1'),
    ('ICM over ERM', 'IC-Mixup', 'ERM', 'top1'),
    ('ECE, ICM against Mixup', 'IC-Mixup', 'Mixup', 'ece'),
    ('ECE, ICM against ERM', 'IC-Mixup', 'ERM', 'ece'),
]
QUICK_BLOCK = {'LT-CIFAR-10 0.01': 'B1', 'CIFAR-100 10 %': 'B2', 'LT-CIFAR-100 0.01': 'B3'}


def report(rows: List[Dict], runs_dir: str, out: str) -> str:
    """The converged suite's extra sections as Markdown; the curves CSV and plot written into ``out``."""
    curves = collect_curves(rows, runs_dir, os.path.join(out, 'cifar-curves-long.csv'))
    plot_curves(curves, os.path.join(out, 'cifar-curves-long.png'))
    parts = [convergence(rows, curves), published(rows), survival(rows)]
    return '\n\n'.join(p for p in parts if p)


def collect_curves(rows: List[Dict], runs_dir: str, path: str) -> List[Dict]:
    """Every finished long run's evaluated epochs, from its folder where it is still there, else from ``path``;
    ``path`` rewritten with all of them."""
    kept = read_curves(path)
    for row in rows:
        if row['recipe'] != 'long':
            continue
        summary = summary_rows(os.path.join(runs_dir, run_name(row_run(row), 'long')))
        if not summary:
            continue
        key = _curve_key(row)
        kept = [c for c in kept if _curve_key(c) != key]
        kept += [{'block': row['block'], 'setting': row['setting'], 'model': row['model'], 'method': row['method'],
                  'seed': row['seed'],
                  'epochs': row['epochs'], 'epoch': int(s['epoch']) + 1, 'eval_top1': float(s['eval_top1']),
                  'train_loss': float(s['train_loss']), 'lr': float(s['lr'])} for s in summary if s['eval_top1']]
    if kept:
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
            writer.writeheader()
            writer.writerows(kept)
    return kept


def read_curves(path: str) -> List[Dict]:
    """The rows of ``cifar-curves-long.csv``: every evaluated epoch of every finished long run."""
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return [dict(r, model=r.get('model', DEFAULT_MODEL), seed=int(r['seed']), epochs=int(r['epochs']),
                     epoch=int(r['epoch']),
                     eval_top1=float(r['eval_top1']), train_loss=float(r['train_loss']), lr=float(r['lr']))
                for r in csv.DictReader(f)]


def _curve_key(row: Dict) -> Tuple:
    return row['block'], row['setting'], row['model'], row['method'], int(row['seed']), int(row['epochs'])


def _mean_curve(curves: Sequence[Dict], setting: str, method: str, epochs: int = LONG_EPOCHS) -> Dict[int, float]:
    """Epoch -> mean test top-1 over the seeds evaluated at that epoch."""
    by_epoch: Dict[int, List[float]] = {}
    for c in curves:
        if (c['setting'], c['method'], c['epochs']) == (setting, method, epochs):
            by_epoch.setdefault(c['epoch'], []).append(c['eval_top1'])
    return {e: statistics.mean(v) for e, v in sorted(by_epoch.items())}


def convergence(rows: List[Dict], curves: Sequence[Dict]) -> str:
    """Top-1 after 100, 150 and 200 epochs per setting and method (is the curve flat at the end?), and the
    half-schedule check (the same run with 100 epochs)."""
    lines = []
    settings = [s for s in QUICK_BLOCK if any(c['setting'] == s for c in curves)]
    if settings:
        lines += ['### Have the runs converged?', '',
                  'Test top-1 % after 100, 150 and 200 epochs (mean over the seeds; the lr drops x0.2 after '
                  'epochs 50, 100 and 150), the change over the last 50 epochs, and how far the evaluations of '
                  'those epochs (every 10th) spread (max − min): a change within that spread is the noise of '
                  'one evaluation, not a trend; then the mean of the last three evaluations, a steadier figure '
                  'than the last one alone (the tables above report the last epoch, as the paper does). '
                  'Curves: `benchmarks/results/cifar-curves-long.png`, every 10 epochs of every run in '
                  '`benchmarks/results/cifar-curves-long.csv`.', '',
                  '| setting | method | seeds | 100 | 150 | 200 | last 50 epochs | spread of epochs 150-200 '
                  '| mean of epochs 180-200 |',
                  '|---|---|---|---|---|---|---|---|---|']
        for setting in settings:
            for method in dict.fromkeys(c['method'] for c in curves if c['setting'] == setting):
                curve = _mean_curve(curves, setting, method)
                if LONG_EPOCHS not in curve:
                    continue
                seeds = len({c['seed'] for c in curves if (c['setting'], c['method']) == (setting, method)
                             and c['epochs'] == LONG_EPOCHS})
                at = [curve.get(e) for e in (100, 150, 200)]
                cells = ' | '.join('-' if v is None else f'{v:.2f}' for v in at)
                change = f'{at[2] - at[1]:+.2f}' if at[1] is not None else '-'
                last = [v for e, v in curve.items() if e >= LONG_EPOCHS - 50]
                last_three = [v for e, v in curve.items() if e >= LONG_EPOCHS - 20]
                lines.append(f'| {setting} | {method} | {seeds} | {cells} | {change} | {max(last) - min(last):.2f} '
                             f'| {statistics.mean(last_three):.2f} |')
    check = [r for r in rows if is_schedule_check(r)]
    full = {(r['setting'], r['method'], r['seed']): r['top1'] for r in rows
            if r['recipe'] == 'long' and r['epochs'] == LONG_EPOCHS}
    for r in check:
        long_run = full.get((r['setting'], r['method'], r['seed']))
        if long_run is None:
            continue
        verdict = 'less than a point: 200 epochs are enough' if abs(long_run - r['top1']) < 1 else (
            'a point or more: the shorter schedule had not converged' if long_run > r['top1'] else
            'a point or more, in favour of the shorter schedule')
        lines += ['', f'Half-schedule check ({r["method"]}, {r["setting"]}, seed {r["seed"]}; the same recipe with '
                      f'{r["epochs"]} epochs and the lr drops at the same fractions): top-1 {r["top1"]:.2f} after '
                      f'{r["epochs"]} epochs, {long_run:.2f} after {LONG_EPOCHS}: {verdict}.']
    return '\n'.join(lines).strip()


def published(rows: List[Dict]) -> str:
    """The published figures at convergence beside ours, for the settings the suite has run, each with its distance
    from our best method there (its mean over seeds, at the last epoch)."""
    ours = [r for r in rows if r['recipe'] == 'long' and not is_schedule_check(r) and r['model'] == DEFAULT_MODEL]
    lines = []
    for setting, figures in PUBLISHED.items():
        cell = [r for r in ours if r['setting'] == setting]
        if not cell:
            continue
        means = {m: statistics.mean(r['top1'] for r in cell if r['method'] == m) for m in {r['method'] for r in cell}}
        best = max(means, key=means.get)
        seeds = sum(r['method'] == best for r in cell)
        if not lines:
            lines += ['### Published figures at convergence', '',
                      'Other code bases on the same data (ResNet-32; facts, with their sources), for the '
                      'level our ResNet-20 runs reach; the paper\'s own numbers (ResNet-34) are in the tables above. '
                      '"Epoch": whether the figure is the last epoch\'s (as ours) or the best test epoch\'s, which '
                      'flatters a figure by the spread of its evaluations (on a long tail 1-3 points here). "Above '
                      'ours": the figure minus our best method\'s mean top-1 on that setting.',
                      '', '| setting | method | top-1 % | ECE % | epoch | above ours | source |',
                      '|---|---|---|---|---|---|---|']
        for label, _, top1, ece, reported, source in figures:
            lines.append(f'| {setting} | {label} | {top1} | {"-" if ece is None else ece} | {reported} | '
                         f'{top1 - means[best]:+.2f} | {source} |')
        lines.append(f'| {setting} | ours: {best} ({seeds} seeds, ResNet-20) | {means[best]:.2f} | - | last | - | '
                     f'`cifar.csv` |')
    return '\n'.join(lines)


def verdict(quick: Optional[Tuple[float, float, float]], converged: Tuple[float, float, float],
            lower_is_better: bool = False) -> str:
    """How a quick-suite difference fares at convergence, from the two 95 % intervals (mean, low, high)."""
    def sign(interval):  # +1 / -1 where the interval excludes 0, else 0
        return 0 if interval is None or interval[1] <= 0 <= interval[2] else (1 if interval[1] > 0 else -1)
    q, c = sign(quick), sign(converged)
    if c == 0:
        return 'no clear difference at convergence' + (' (there was one in the quick suite)' if q else '')
    direction = ('lower' if c < 0 else 'higher') if lower_is_better else ('gain' if c > 0 else 'loss')
    if q == c:
        return f'survives ({direction})'
    return f'reverses ({direction} at convergence)' if q else f'appears at convergence ({direction})'


def survival(rows: List[Dict]) -> str:
    """The quick suite's paired differences beside the converged suite's, per setting, with a verdict."""
    lines = []
    for setting, quick_block in QUICK_BLOCK.items():
        for name, a, b, column in CONCLUSIONS:
            cells = []
            for recipe, block in (('cpu', quick_block), ('long', None)):
                by_seed = {(r['method'], r['seed']): r[column] for r in rows
                           if r['recipe'] == recipe and r['setting'] == setting and not is_schedule_check(r)
                           and (block is None or r['block'] == block)}
                cells.append(paired_diffs(by_seed, a, b))
            quick, converged = cells
            if len(converged) < 2:
                continue
            if not lines:
                lines += ['### Which conclusions of the quick suite survive convergence', '',
                          'Paired differences (a − b, mean and 95 % t-interval over seeds) in the quick suite '
                          '(`cpu` recipe, 10-25 epochs) and at convergence (`long` recipe, 200 epochs). Top-1 in '
                          'points, ECE in points (lower is better calibrated).', '',
                          '| setting | conclusion | a − b | quick suite | converged | verdict |',
                          '|---|---|---|---|---|---|']
            outcome = verdict(t_interval(quick) if len(quick) >= 2 else None, t_interval(converged),
                              lower_is_better=column == 'ece')
            if len(converged) < len(quick):  # at equal spread, two seeds give a t-interval 3.6x wider than three
                outcome += f'; provisional, {len(converged)} of {len(quick)} seeds'
            lines.append(f'| {setting} | {name} | {a} − {b} | {paired_interval(quick)} | '
                         f'{paired_interval(converged)} | {outcome} |')
    return '\n'.join(lines)


def plot_curves(curves: Sequence[Dict], path: str) -> bool:
    """One panel per setting: each method's mean test top-1 over seeds against the epoch; False without
    matplotlib or curves."""
    settings = [s for s in QUICK_BLOCK if any(c['setting'] == s and c['epochs'] == LONG_EPOCHS for c in curves)]
    if not settings:
        return False
    with panel_row(len(settings), path) as axes:
        if axes is None:
            return False
        for ax, setting in zip(axes, settings):
            for method in dict.fromkeys(c['method'] for c in curves if c['setting'] == setting):
                curve = _mean_curve(curves, setting, method)
                if curve:
                    ax.plot(list(curve), list(curve.values()), label=method,
                            linestyle='-' if method.startswith('IC') else '--')
            ax.set_title(setting)
            ax.set_xlabel('epoch')
            ax.set_ylabel('test top-1 %')
            ax.legend(fontsize=7)
    return True
