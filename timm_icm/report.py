"""Compare finished train_icm.py runs: ``python -m timm_icm.report RUN_DIR [RUN_DIR ...]``.

Prints one markdown row per run with the last epoch's eval metrics from its ``summary.csv`` and
the method read from its ``args.yaml``; ``--mean`` prints one row per method (mean ± std).
"""
import argparse
import os
import statistics
import sys
from typing import Dict, List, Optional

from . import files
from .mixup import mixing_on


def method_name(args: Dict) -> str:
    """The paper's name of the method a run's args describe, e.g. IC-RegMixup, Remix, ERM."""
    adjusted = ' + LA' if args.get('logit_adjust') else ''
    if not mixing_on(args.get('mixup', 0), args.get('cutmix', 0), args.get('cutmix_minmax')):
        return 'LA' if adjusted else 'ERM'
    base = 'RegMixup' if args.get('regmixup') else 'Remix' if args.get('remix') else (
        'Mixup' if args.get('mixup', 0) > 0 else 'CutMix')
    if not args.get('icm'):
        return base + adjusted
    suffix = {'class': ' (class axis)', 'pair': ' (pair axis)'}.get(args.get('icm_axes', 'both'), '')
    if args.get('icm_duplicates') == 'merge':
        suffix += ' (merge)'
    if args.get('icm_unmixed') == 'ce':
        suffix += ' (unmixed ce)'
    return f'IC-{base}{suffix}{adjusted}'


def read_run(folder: str) -> Optional[Dict]:
    """The last finished epoch of a run folder; None when it has none. A broken summary.csv or args.yaml
    raises :class:`timm_icm.files.FileProblem` naming it (a row cut short by a killed run is left out)."""
    summary = os.path.join(folder, 'summary.csv')
    if not os.path.lexists(summary):
        return None
    if os.path.isfile(summary) and os.path.getsize(summary) == 0:
        return None
    header, rows = files.read_csv(summary, 'summary')
    if not rows:
        return None
    last = dict(zip(header, rows[-1]))
    args = {}
    args_yaml = os.path.join(folder, 'args.yaml')
    if os.path.lexists(args_yaml):
        args = files.load_yaml(args_yaml, "the run's args.yaml") or {}
        if not isinstance(args, dict):
            raise files.FileProblem("the run's args.yaml", args_yaml, f"holds a {type(args).__name__}, not the run's "
                                    f"flags (a mapping)")
    try:
        method = method_name(args)
    except (TypeError, ValueError) as e:
        raise files.FileProblem("the run's args.yaml", args_yaml, f'holds flags of the wrong type ({e})') from None
    try:
        return {'run': os.path.basename(os.path.normpath(folder)), 'method': method,
                'epochs': int(float(last['epoch'])) + 1,
                **{k[5:]: float(v) for k, v in last.items() if k.startswith('eval_') and v != ''}}
    except (KeyError, ValueError) as e:
        raise files.FileProblem('summary', summary, f'is not a summary.csv of train_icm.py ({type(e).__name__}: '
                                                    f'{e})') from None


def markdown_table(runs: List[Dict]) -> str:
    lines = ['| run | method | epochs | top-1 % | top-5 % | ECE % |', '|---|---|---|---|---|---|']
    for r in runs:
        lines.append(f"| {r['run']} | {r['method']} | {r['epochs']} | {r.get('top1', float('nan')):.2f} | "
                     f"{r.get('top5', float('nan')):.2f} | {r.get('ece', float('nan')):.2f} |")
    return '\n'.join(lines)


def mean_table(runs: List[Dict]) -> str:
    """One row per method: mean +- std over its runs (e.g. seeds) of the last epoch's metrics."""
    lines = ['| method | runs | top-1 % | top-5 % | ECE % |', '|---|---|---|---|---|']
    for method in dict.fromkeys(r['method'] for r in runs):
        group = [r for r in runs if r['method'] == method]
        cells = []
        for key in ('top1', 'top5', 'ece'):
            values = [r[key] for r in group if key in r]
            spread = f' ± {statistics.stdev(values):.2f}' if len(values) > 1 else ''
            cells.append(f'{statistics.mean(values):.2f}{spread}' if values else '-')
        lines.append(f'| {method} | {len(group)} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('runs', nargs='+', help='train_icm.py output folders')
    parser.add_argument('--mean', action='store_true', help='one row per method: mean ± std over its runs')
    args = parser.parse_args(argv)
    try:
        runs = [read_run(folder) for folder in args.runs]
    except files.FileProblem as e:
        print(f'timm_icm.report: error: {e}', file=sys.stderr)
        return 2
    missing = [folder for folder, run in zip(args.runs, runs) if run is None]
    if missing:
        print(f'timm_icm.report: error: no finished epoch in {", ".join(missing)}', file=sys.stderr)
        return 2
    print(mean_table(runs) if args.mean else markdown_table(runs))
    return 0


if __name__ == '__main__':
    sys.exit(main())
