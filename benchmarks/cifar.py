"""The paper's CIFAR experiments on the real CIFAR-10/100, with the long-tail baseline (logit adjustment).

    python benchmarks/cifar.py [--blocks B1 B2] [--seeds 3] [--jobs 2] [--recipe cpu|paper] [--extras]
    python benchmarks/cifar.py --recipe long --blocks L1 L2 [--extras]      # converged, 200 epochs (hours a run)
    python benchmarks/cifar.py --report [--readme docs/cifar.md]   # tables and plot from the CSV alone

Blocks of the quick suite (each a paper table at the ``cpu`` recipe's scale, 10-25 epochs):
  B1  LT-CIFAR-10, imbalance 0.01 (Table 2 right): does ICM add anything beyond logit adjustment?
  B2  CIFAR-100, 10 % of every class (Table 1 right, Figure 3 right): the data-constrained claim.
  B3  LT-CIFAR-10 at 0.1 and LT-CIFAR-100 at 0.01 (Table 2 right).
Blocks of the converged suite (the ``long`` recipe: the paper's 200-epoch schedule with ResNet-20):
  L1  LT-CIFAR-10 0.01;  L2  CIFAR-100 10 %;  L3  LT-CIFAR-100 0.01 (after the others' extras).
  After L1 and L2's core methods, IC-Mixup on LT-CIFAR-10 0.01 (seed 0) runs once more with half the
  schedule (100 epochs): if the two differ by less than a point, 200 epochs are enough.

Every run is a real ``train_icm.py`` run (base YAML of the recipe, a method of ``hparams/methods/``,
the data setting as flags, ``--seed S --subset-seed S``), so the methods of one seed share the subset
and the initialisation and IC-X minus X is paired. Each finished run appends one row to
``cifar.csv`` (block, method, seed, recipe, commit, device, top-1, top-5, ECE, seconds); a re-run skips
the rows it has, so the suite is resumable, and a run cut off resumes from its newest epoch checkpoint
(``last.pth.tar``, written every epoch with the random streams: it ends as if it had never stopped). The
run folders live outside the checkout (``--runs-dir``, default ``~/.cache/timm-icm/cifar``), so that a
run outlives the checkout it was started from.
The data (``data/`` of the checkout) is unpacked from ``../shared/data/cifar`` when it is missing.
"""
import argparse
import csv
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

import cifar_converged
import cifar_ladder
from stats import cpu_name, git_commit, level_panels, mean_std, paired_diffs, paired_interval
from suite import (BLOCKS, CURVE_RUN, METHODS, PACK, PAIRS, RECIPES, ROOT, RUNS_DIR, SETTINGS, Run, append_row, fail,
                   is_long_tail, is_schedule_check, plan, read_calibration_rows, read_class_rows, read_rows, run_epochs,
                   run_name, summary_rows, train_argv)

def stop_on_sigterm() -> None:
    """Make ``kill PID`` (SIGTERM) end the suite as Ctrl-C does: the pool's ``with`` block then terminates its
    workers. Without it they go on training, unseen, and a restarted suite trains the same runs beside them,
    in the same folders."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_one(job: Tuple[Run, str, str, str, str, str]) -> Dict:
    """One train_icm.py run in this worker process (one thread); returns its CSV row."""
    run, recipe, data_dir, out, commit, device = job
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, ROOT)
    import contextlib

    import train_icm
    argv = train_argv(run, recipe, data_dir, out)
    folder = os.path.join(out, run_name(run, recipe))
    checkpoint = os.path.join(folder, 'last.pth.tar')
    epochs_before = 0
    if os.path.exists(checkpoint):  # a run cut off earlier goes on from its newest epoch
        argv += ['--resume', checkpoint]
        epochs_before = len(summary_rows(folder))
    start = time.time()
    os.makedirs(out, exist_ok=True)
    with open(f'{folder}.log', 'a') as log, contextlib.redirect_stdout(log):  # the log outlives a cut-off run
        code = train_icm.main(argv + (['--device', 'cuda'] if recipe == 'paper' else []))
    if code != 0:
        with open(f'{folder}.log') as log:
            raise RuntimeError(f'train_icm.py {" ".join(argv)} exited {code}:\n{log.read()[-2000:]}')
    last = summary_rows(folder)[-1]
    epochs = int(last['epoch']) + 1
    seconds = (time.time() - start) * epochs / max(epochs - epochs_before, 1)  # a resumed run: at this part's pace
    return dict(block=run.block, setting=run.setting, model=run.model, method=run.method, seed=run.seed, recipe=recipe,
                epochs=epochs, commit=commit, device=device, top1=float(last['eval_top1']),
                top5=float(last['eval_top5']), ece=float(last['eval_ece']), seconds=round(seconds, 1))


def ensure_data(data_dir: str, datasets: Sequence[str]) -> None:
    """Unpack CIFAR from ../shared/data/cifar into ``data_dir`` where its pickles are missing."""
    layout = {'cifar10': ('cifar-10-batches-py', 'test_batch'), 'cifar100': ('cifar-100-python', 'test')}
    missing = [d for d in datasets if not os.path.exists(os.path.join(data_dir, *layout[d]))]
    if not missing:
        return
    unpack = os.path.join(PACK, 'unpack.py')
    if not os.path.exists(unpack):
        fail(f'{", ".join(missing)} not in {data_dir} and no pack to unpack at {PACK}: '
             f'put the original pickles there (cifar-10-batches-py/, cifar-100-python/)')
    for d in missing:
        subprocess.run([sys.executable, unpack, data_dir, '--only', d], check=True)


def report(rows: List[Dict], recipe: str, class_rows: Sequence[Dict] = (),
           calibration_rows: Sequence[Dict] = ()) -> str:
    """One recipe's tables: per block and setting, each method's mean ± std over seeds beside the paper's top-1,
    the paired differences, and what the per-class and calibration rows tell (where there are any)."""
    rows = [r for r in rows if r['recipe'] == recipe and not is_schedule_check(r)]
    commits = sorted({r['commit'] for r in rows})
    lines = [f'Recipe `{recipe}`; {len(rows)} runs from commit(s) {", ".join(commits) or "-"}; '
             f'devices: {"; ".join(sorted({r["device"] for r in rows})) or "-"}.']
    for block, spec, setting, model in [(b, spec, s, m) for b, spec in BLOCKS.items() for m in spec.models
                                        for s in spec.settings]:
        cell = [r for r in rows if (r['setting'], r['block'], r['model']) == (setting, block, model)]
        if not cell:
            continue
        title = f'{setting}, {model}' if len(spec.models) > 1 else setting
        methods = [m for m in METHODS if any(r['method'] == m for r in cell)]
        epochs = sorted({r['epochs'] for r in cell})
        minutes = statistics.median(r['seconds'] for r in cell) / 60
        scaled = {(r['method'], r['seed']): r['ece_scaled'] for r in calibration_rows
                  if (r['recipe'], r['setting'], r['model']) == (recipe, setting, model)}
        lines += ['', f'### {block}: {title} ({"/".join(map(str, epochs))} epochs, '
                      f'median {minutes:.1f} min per run)', '',
                  '| method | seeds | top-1 % | top-5 % | ECE % |' + (' ECE % after temperature |' if scaled else '')
                  + ' paper top-1 |', '|---|---|---|---|---|---|' + ('---|' if scaled else '')]
        for m in methods:
            rs = [r for r in cell if r['method'] == m]
            paper = SETTINGS[setting].paper.get(m)
            after = [scaled[(m, r['seed'])] for r in rs if (m, r['seed']) in scaled]
            cells = [mean_std([r[k] for r in rs]) for k in ('top1', 'top5', 'ece')] + (
                [mean_std(after)] if scaled else []) + [f'{paper if paper is not None else "-"}']
            lines.append(f'| {m} | {len(rs)} | ' + ' | '.join(cells) + ' |')
        by_seed = {(r['method'], r['seed']): r['top1'] for r in cell}
        pairs = [(a, b) for a, b in PAIRS if a in methods and b in methods]
        if pairs:
            lines += ['', 'Paired differences, top-1 points (mean and 95 % t-interval over seeds):', '',
                      '| comparison | seeds | difference | paper |', '|---|---|---|---|']
            for a, b in pairs:
                diffs = paired_diffs(by_seed, a, b)
                paper, deltas = SETTINGS[setting].paper, SETTINGS[setting].paper_deltas
                delta = (f'{paper[a] - paper[b]:+.2f}' if a in paper and b in paper
                         else f'{deltas[(a, b)]:+.2f}' if (a, b) in deltas else '-')
                subtrahend = f'({b})' if ' + ' in b else b
                lines.append(f'| {a} − {subtrahend} | {len(diffs)} | {paired_interval(diffs)} | {delta} |')
        per_class = [r for r in class_rows if (r['recipe'], r['setting'], r['model']) == (recipe, setting, model)]
        lines += confidence_table(per_class) + (class_groups(per_class) if is_long_tail(setting) else [])
    return '\n'.join(lines)


def _group_percents(run: List[Dict], groups: Dict[str, List[int]]) -> List[float]:
    """One run's top-1 % in each class group, then the % of all test images it predicts as the first group."""
    def total(key: str, classes: Sequence[int]) -> int:
        return sum(r[key] for r in run if r['class'] in classes)
    accuracy = [100 * total('correct', g) / total('test_images', g) for g in groups.values()]
    first = next(iter(groups.values()))
    return accuracy + [100 * total('predicted', first) / sum(r['test_images'] for r in run)]


def _seed_runs(cell: List[Dict], method: str) -> List[List[Dict]]:
    """A method's per-class rows, one list per seed."""
    seeds = sorted({r['seed'] for r in cell if r['method'] == method})
    return [[r for r in cell if r['method'] == method and r['seed'] == s] for s in seeds]


def confidence_table(cell: List[Dict]) -> List[str]:
    """Which way each method's calibration errs: its mean top softmax probability on the test set against
    its top-1 (confidence above top-1 is overconfidence), from the rows of cifar-classes.csv."""
    def percent(run: List[Dict], key: str) -> float:
        return 100 * sum(r[key] for r in run) / sum(r['test_images'] for r in run)
    table = []
    for method in METHODS:
        runs = _seed_runs(cell, method)
        if runs:
            top1 = statistics.mean(percent(run, 'correct') for run in runs)
            confidence = statistics.mean(percent(run, 'confidence') for run in runs)
            table.append(f'| {method} | {len(runs)} | {top1:.1f} | {confidence:.1f} | {confidence - top1:+.1f} |')
    if not table:
        return []
    return ['', 'Confidence against accuracy on the test set: the mean top softmax probability, and by how '
                'much it exceeds top-1 (positive: overconfident). Mean over seeds.', '',
            '| method | seeds | top-1 % | confidence % | confidence − top-1 |', '|---|---|---|---|---|'] + table


def class_groups(cell: List[Dict]) -> List[str]:
    """One long-tail setting's rows of cifar-classes.csv as a table: each method's top-1 on the most frequent
    third of the classes (head), the middle and the rarest third (tail), and the share of test images it
    predicts as a head class."""
    if not cell:
        return []
    counts = {r['class']: r['train_images'] for r in cell}
    order = sorted(counts, key=lambda c: (-counts[c], c))
    third = round(len(order) / 3)
    groups = {'head': order[:third], 'middle': order[third:-third], 'tail': order[-third:]}
    lines = ['', f'Where the errors go: top-1 % on the {third} most frequent classes '
                 f'(head: {counts[order[0]]}-{counts[order[third - 1]]} training images), the middle and '
                 f'the {third} rarest (tail: {counts[order[-third]]}-{counts[order[-1]]}), and the share of '
                 f'all test images predicted as a head class (a balanced test set has '
                 f'{100 * third / len(order):.0f} %). Mean over seeds.', '',
             '| method | seeds | head | middle | tail | predicted as head % |', '|---|---|---|---|---|---|']
    for method in METHODS:
        runs = _seed_runs(cell, method)
        if runs:
            columns = zip(*(_group_percents(run, groups) for run in runs))
            lines.append(f'| {method} | {len(runs)} | '
                         + ' | '.join(f'{statistics.mean(c):.1f}' for c in columns) + ' |')
    return lines


def level_data(rows: List[Dict], recipe: str) -> Dict[str, Dict[str, List[float]]]:
    """Setting -> method -> the top-1 of each seed: the cells of the recipe's blocks of one network (the capacity
    ladder has its own figures, benchmarks/cifar_ladder.py), without the half-schedule check."""
    rows = [r for r in rows
            if r['recipe'] == recipe and not is_schedule_check(r) and len(BLOCKS[r['block']].models) == 1]
    return {s: {m: [r['top1'] for r in rows if r['setting'] == s and r['method'] == m] for m in METHODS}
            for s in SETTINGS if any(r['setting'] == s for r in rows)}


def plot(rows: List[Dict], recipe: str, path: str) -> bool:
    panels = level_data(rows, recipe)
    return bool(panels) and level_panels(panels, path)


def learning_curve(runs_dir: str, out: str, recipe: str) -> str:
    """Keep the every-epoch evaluation of ``CURVE_RUN`` (``cifar-curve-RECIPE.csv`` + PNG); its table as text."""
    block, method, seed = CURVE_RUN
    setting = BLOCKS[block].settings[0]
    summary = os.path.join(runs_dir, run_name(Run(block, setting, method, seed), recipe), 'summary.csv')
    path = os.path.join(out, f'cifar-curve-{recipe}.csv')
    if os.path.exists(summary):
        with open(summary, newline='') as f:
            rows = [r for r in csv.DictReader(f) if r.get('eval_top1')]
        finished = rows and (recipe != 'cpu' or int(rows[-1]['epoch']) + 1 == SETTINGS[setting].cpu_epochs)
        if finished:
            with open(path, 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=['epoch', 'train_loss', 'eval_top1', 'eval_ece', 'lr'])
                writer.writeheader()
                writer.writerows({k: r[k] for k in writer.fieldnames} for r in rows)
    if not os.path.exists(path):
        return ''
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([int(r['epoch']) + 1 for r in rows], [float(r['eval_top1']) for r in rows], marker='o')
        ax.set_xlabel('epoch')
        ax.set_ylabel('test top-1 %')
        ax.set_title(f'{method}, {setting}, seed {seed} ({recipe})')
        fig.tight_layout()
        fig.savefig(os.path.join(out, f'cifar-curve-{recipe}.png'), dpi=90)
        plt.close(fig)
    except ImportError:
        pass
    return (f'Learning curve ({method}, {setting}, seed {seed}; test top-1 % after each epoch): '
            + ', '.join(f'{float(r["eval_top1"]):.1f}' for r in rows) + '.')


# The reports: the quick suite and the paper recipe in cifar.md, the converged suite in cifar-long.md.
REPORTS = {'cifar': ('cpu', 'paper'), 'cifar-long': ('long',)}


def write_report(out: str, rows: List[Dict], runs_dir: str) -> List[str]:
    """Write each report of ``REPORTS`` that has rows (Markdown and plots into ``out``); their names."""
    class_rows = read_class_rows(os.path.join(out, 'cifar-classes.csv'))
    calibration_rows = read_calibration_rows(os.path.join(out, 'cifar-calibration.csv'))
    written = []
    for stem, recipes in REPORTS.items():
        parts = []
        for recipe in recipes:
            if any(r['recipe'] == recipe for r in rows):
                parts.append(report(rows, recipe, class_rows, calibration_rows))
                plot(rows, recipe, os.path.join(out, f'cifar-{recipe}.png'))
                if recipe == 'long':
                    parts.append(cifar_converged.report(rows, runs_dir, out))
                    curves = cifar_converged.read_curves(os.path.join(out, 'cifar-curves-long.csv'))
                    parts.append(cifar_ladder.report(rows, curves, out))
                else:
                    parts.append(learning_curve(runs_dir, out, recipe))
        if parts:
            with open(os.path.join(out, f'{stem}.md'), 'w') as f:
                f.write('Made by `python benchmarks/cifar.py --report` from `cifar.csv`, `cifar-classes.csv` and '
                        '`cifar-calibration.csv`.\n\n' + '\n\n'.join(p for p in parts if p) + '\n')
            written.append(stem)
    return written


def splice_page(path: str, stem: str, report_md: str) -> None:
    """Put a report (less its first line, headings one level down) between the page's markers
    ``<!-- STEM.md -->`` and ``<!-- /STEM.md -->`` (docs/cifar.md: ``make cifar``)."""
    start_marker, end_marker = f'<!-- {stem}.md -->', f'<!-- /{stem}.md -->'
    with open(path) as f:
        text = f.read()
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        fail(f'{path} has no {start_marker} ... {end_marker} block to put the report in')
    body = report_md.split('\n', 1)[1].strip().replace('\n### ', '\n#### ')
    with open(path, 'w') as f:
        f.write(text[:start + len(start_marker)] + '\n' + body + '\n' + text[end:])


def row_key(row: Dict) -> Tuple:
    """What identifies a finished run in cifar.csv."""
    return row['recipe'], row['setting'], row['model'], row['method'], row['seed'], row['epochs']


def merge_rows(csv_path: str, sources: Sequence[str]) -> int:
    """Append to ``csv_path`` the rows of ``sources`` it lacks, in their order; how many."""
    have = {row_key(r) for r in read_rows(csv_path)}
    added = 0
    for source in sources:
        if not os.path.exists(source):
            fail(f'--merge {source}: no such file')
        for row in read_rows(source):
            if row_key(row) not in have:
                append_row(csv_path, row)
                have.add(row_key(row))
                added += 1
    return added


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--blocks', nargs='+', default=['B1', 'B2'], choices=list(BLOCKS))
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--extras', action='store_true', help="each block's further methods, after every core run")
    parser.add_argument('--methods', nargs='+', default=None, choices=list(METHODS),
                        help='only these methods of the planned runs (default: all of them)')
    parser.add_argument('--models', nargs='+', default=None, metavar='MODEL',
                        help='only these networks of the planned runs (default: all of them; block C1 has '
                             f'{", ".join(BLOCKS["C1"].models)})')
    parser.add_argument('--recipe', default='cpu', choices=RECIPES,
                        help='cpu: ResNet-20, short cosine schedules (hparams/cpu); long: ResNet-20 with the '
                             "paper's 200-epoch schedule (hparams/long); paper: ResNet-34, 200 epochs (hparams/paper), "
                             'on a GPU')
    parser.add_argument('--jobs', type=int, default=2, help='parallel runs, one thread each')
    parser.add_argument('--data-dir', default=os.path.join(ROOT, 'data'))
    parser.add_argument('--runs-dir', default=RUNS_DIR,
                        help='where each run writes its folder (summary.csv, checkpoints); outside the checkout, '
                             'so that a run cut off resumes in a later checkout (default: %(default)s)')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results'))
    parser.add_argument('--device-name', default=None, help='recorded in each row (default: this CPU)')
    parser.add_argument('--report', action='store_true', help='only write the tables and plots from the CSV')
    parser.add_argument('--merge', nargs='+', default=None, metavar='CSV',
                        help="only add to --out's cifar.csv the rows of these files that it lacks (a pinned clone's "
                             'suite writing to its own --out; a file from before the model column reads as '
                             'resnet20_cifar)')
    parser.add_argument('--readme', default=None,
                        help='with --report: also put the tables into this Markdown page (make cifar: docs/cifar.md), '
                             'each report between its markers: <!-- cifar.md --> ... <!-- /cifar.md --> and '
                             '<!-- cifar-long.md --> ... <!-- /cifar-long.md -->')
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, 'cifar.csv')
    if args.merge:
        print(f'{merge_rows(csv_path, args.merge)} rows added to {csv_path}')
        return 0
    if args.report:
        for stem in write_report(args.out, read_rows(csv_path), args.runs_dir):
            with open(os.path.join(args.out, f'{stem}.md')) as f:
                report_md = f.read()
            if args.readme:
                splice_page(args.readme, stem, report_md)
            print(report_md)
        return 0

    done = {row_key(r) for r in read_rows(csv_path)}
    todo = [r for r in plan(args.blocks, args.seeds, args.extras, args.recipe)
            if (args.recipe, r.setting, r.model, r.method, r.seed, run_epochs(r, args.recipe)) not in done
            and (args.methods is None or r.method in args.methods) and (args.models is None or r.model in args.models)]
    ensure_data(args.data_dir, sorted({SETTINGS[r.setting].dataset for r in todo}))
    commit, device = git_commit(ROOT), args.device_name or cpu_name()
    print(f'{len(todo)} runs to do ({len(done)} already in {csv_path}); commit {commit}, {device}', flush=True)
    start = time.time()
    jobs = [(r, args.recipe, args.data_dir, args.runs_dir, commit, device) for r in todo]
    if jobs:
        stop_on_sigterm()
        with mp.get_context('spawn').Pool(args.jobs, maxtasksperchild=1) as pool:
            for i, row in enumerate(pool.imap_unordered(run_one, jobs), 1):
                append_row(csv_path, row)
                eta = (time.time() - start) / i * (len(jobs) - i) / 60
                print(f'[{i}/{len(jobs)}] {row["setting"]:>17} {row["model"]} {row["method"]:<24} '
                      f'seed {row["seed"]}: top-1 '
                      f'{row["top1"]:.2f} ({row["seconds"]:.0f} s; ~{eta:.0f} min left)', flush=True)
    for stem in write_report(args.out, read_rows(csv_path), args.runs_dir):
        with open(os.path.join(args.out, f'{stem}.md')) as f:
            print(f.read())
    return 0


if __name__ == '__main__':
    sys.exit(main())
