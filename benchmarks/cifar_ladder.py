"""What the capacity ladder (block C1: CIFAR-10 with 50 training images per class, the ``long`` recipe on ResNet-20,
WRN-16-4 and ResNet-34) adds to the converged report: the levels per network beside the paper's Table 2 (left), the
gains of the IC variants per network with their intervals, a figure of those gains against the parameter count, and
every run's learning curve, so that a run stuck at chance cannot pass as a gain. ``python benchmarks/cifar.py
--report`` calls :func:`report`; this module runs nothing itself.
"""
from typing import Dict, List, Sequence

from stats import paired_diffs, paired_interval, panel_row, t_interval
from suite import BLOCKS, LADDER_PARAMS, SETTINGS

BLOCK = 'C1'
SETTING = BLOCKS[BLOCK].settings[0]
GAINS = [('IC-Mixup', 'Mixup'), ('IC-RegMixup', 'RegMixup')]
CHANCE = 10.0   # top-1 % of a guess on CIFAR-10
STUCK_MARGIN = 5.0  # a run within this many points of chance at its first evaluation after epoch 40 is stuck
STUCK_EPOCH = 40    # ... before the first lr drop (after epoch 50), where a stuck baseline shows


def _ladder_rows(rows: Sequence[Dict]) -> List[Dict]:
    return [r for r in rows if r['recipe'] == 'long' and r['block'] == BLOCK and r['epochs'] == 200]


def models_run(rows: Sequence[Dict]) -> List[str]:
    """The ladder's networks that have results, smallest first."""
    return [m for m in LADDER_PARAMS if any(r['model'] == m for r in rows)]


def gains(rows: Sequence[Dict]) -> Dict[str, Dict[str, List[float]]]:
    """Network -> 'IC-X − X' -> the paired top-1 differences, by seed."""
    rows = _ladder_rows(rows)
    out = {}
    for model in models_run(rows):
        by_seed = {(r['method'], r['seed']): r['top1'] for r in rows if r['model'] == model}
        out[model] = {f'{a} − {b}': paired_diffs(by_seed, a, b) for a, b in GAINS}
    return out


def stuck_runs(curves: Sequence[Dict]) -> List[str]:
    """The ladder's runs whose first evaluation after ``STUCK_EPOCH`` is within ``STUCK_MARGIN`` of chance."""
    stuck = []
    for c in curves:
        if c['block'] == BLOCK and c['epoch'] == _first_after(curves, c) and c['eval_top1'] < CHANCE + STUCK_MARGIN:
            stuck.append(f'{c["model"]} {c["method"]} seed {c["seed"]} ({c["eval_top1"]:.1f} % at epoch {c["epoch"]})')
    return stuck


def _first_after(curves: Sequence[Dict], c: Dict) -> int:
    epochs = [d['epoch'] for d in curves if (d['block'], d['model'], d['method'], d['seed']) ==
              (c['block'], c['model'], c['method'], c['seed']) and d['epoch'] >= STUCK_EPOCH]
    return min(epochs) if epochs else -1


def report(rows: Sequence[Dict], curves: Sequence[Dict], out: str) -> str:
    """The ladder's section of the converged report (Markdown); its figures written into ``out``."""
    rows = _ladder_rows(rows)
    if not rows:
        return ''
    paper = SETTINGS[SETTING].paper
    lines = ['### The capacity ladder: does ICM\'s gain grow with the network?', '',
             f'{SETTING} (block {BLOCK}): the levels per network are in the tables of block {BLOCK} above, beside the '
             'paper\'s Table 2 (left: ResNet-34 on ciFAIR-10, the same 500 training images per draw of CIFAR-10, a '
             'test set with CIFAR-10\'s near-duplicates of training images replaced; close, not identical).']
    lines += ['', 'The IC variants\' gains per network: paired by seed (same subset, same initialisation), mean and '
                  '95 % t-interval, top-1 points; each seed\'s difference in brackets. Figure: '
                  '`benchmarks/results/cifar-ladder.png`.', '',
              '| network | comparison | seeds | difference | per seed | paper (ResNet-34) |',
              '|---|---|---|---|---|---|']
    for model, by_pair in gains(rows).items():
        for (a, b), diffs in zip(GAINS, by_pair.values()):
            if diffs:
                lines.append(f'| {model} | {a} − {b} | {len(diffs)} | {paired_interval(diffs)} | '
                             f'{", ".join(f"{d:+.2f}" for d in diffs)} | {paper[a] - paper[b]:+.2f} |')
    stuck = stuck_runs(curves)
    lines += ['', f'Runs stuck near chance (under {CHANCE + STUCK_MARGIN:.0f} % top-1 at their first evaluation after '
                  f'epoch {STUCK_EPOCH}, before the first lr drop): ' + ('; '.join(stuck) if stuck else 'none') + '. '
                  'Every run\'s curve: `benchmarks/results/cifar-ladder-curves.png`.']
    plot_gains(rows, f'{out}/cifar-ladder.png')
    plot_curves(curves, f'{out}/cifar-ladder-curves.png')
    return '\n'.join(lines)


def plot_gains(rows: Sequence[Dict], path: str) -> bool:
    """One panel per comparison: each seed's gain as a small dot and the mean with its 95 % interval, against the
    network's parameter count (log axis). False without matplotlib or gains."""
    by_model = gains(rows)
    if not any(d for pairs in by_model.values() for d in pairs.values()):
        return False
    with panel_row(len(GAINS), path) as axes:
        if axes is None:
            return False
        for ax, (a, b) in zip(axes, GAINS):
            for model, pairs in by_model.items():
                diffs, x = pairs[f'{a} − {b}'], LADDER_PARAMS[model]
                if not diffs:
                    continue
                mean, low, high = t_interval(diffs)
                ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], fmt='o', color='tab:orange', capsize=4)
                ax.plot([x * 1.08] * len(diffs), diffs, '.', color='tab:orange', alpha=0.5)
                ax.annotate(model.replace('_cifar', ''), (x, mean), textcoords='offset points', xytext=(8, -3),
                            fontsize=7)
            ax.axhline(0, color='grey', linewidth=0.8)
            ax.set_xscale('log')
            ax.set_xlabel('parameters')
            ax.set_ylabel(f'{a} − {b}, top-1 points')
            ax.set_title(f'{SETTING}: {a} − {b}', fontsize=9)
    return True


def plot_curves(curves: Sequence[Dict], path: str) -> bool:
    """One panel per network: every run's test top-1 against the epoch, a line per run, coloured by method."""
    curves = [c for c in curves if c['block'] == BLOCK]
    models = [m for m in LADDER_PARAMS if any(c['model'] == m for c in curves)]
    if not models:
        return False
    colours = dict(zip(BLOCKS[BLOCK].core, ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:grey')))
    with panel_row(len(models), path) as axes:
        if axes is None:
            return False
        for ax, model in zip(axes, models):
            runs = sorted({(c['method'], c['seed']) for c in curves if c['model'] == model})
            for method, seed in runs:
                points = sorted((c['epoch'], c['eval_top1']) for c in curves
                                if (c['model'], c['method'], c['seed']) == (model, method, seed))
                ax.plot(*zip(*points), color=colours.get(method, 'black'), alpha=0.7, linewidth=1,
                        label=method if seed == min(s for m, s in runs if m == method) else None)
            ax.axhline(CHANCE, color='grey', linewidth=0.8, linestyle=':')
            ax.set_title(f'{model} ({LADDER_PARAMS[model] / 1e6:.2f} M)', fontsize=9)
            ax.set_xlabel('epoch')
            ax.set_ylabel('test top-1 %')
            ax.legend(fontsize=7)
    return True
