"""benchmarks/cifar.py without training: the plan, resuming from the CSV, the report made from the CSV alone, and
stopping the suite."""
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import cifar  # noqa: E402
import suite  # noqa: E402


def test_plan_runs_each_blocks_core_first_then_extras_then_b3():
    runs = suite.plan(['B1', 'B2', 'B3'], seeds=3, extras=True)
    assert len(runs) == 3 * (8 + 3) + 3 * (4 + 3) + 3 * 2 * 6
    assert len(set(runs)) == len(runs)
    kinds = [('extra' if r.method in suite.BLOCKS[r.block].extras else r.block) for r in runs]
    first = {k: kinds.index(k) for k in set(kinds)}
    last = {k: len(kinds) - 1 - kinds[::-1].index(k) for k in set(kinds)}
    assert last['B1'] < first['B2'] and last['B2'] < first['extra'] and last['extra'] < first['B3']
    core = suite.plan(['B1', 'B2'], seeds=3, extras=False)
    assert len(core) == 36 and {r.seed for r in core} == {0, 1, 2}
    # seed-major: every method of seed 0 before any of seed 1, so pairs complete together
    b1 = [r.seed for r in core if r.block == 'B1']
    assert b1 == sorted(b1)


def test_every_method_and_setting_resolves_to_files():
    for name, (method_file, _) in suite.METHODS.items():
        assert os.path.isfile(os.path.join(suite.HPARAMS, 'methods', method_file)), name
    for setting in suite.SETTINGS.values():
        assert os.path.isfile(os.path.join(suite.HPARAMS, 'cpu', f'{setting.dataset}_resnet20.yaml'))
        assert os.path.isfile(os.path.join(suite.HPARAMS, 'paper', f'{setting.dataset}_resnet34.yaml'))
    argv = suite.train_argv(suite.Run('B1', 'LT-CIFAR-10 0.01', 'ICM contrast, no mixing', 1), 'cpu', 'D', 'O')
    assert argv[argv.index('--epochs') + 1] == '10' and argv[argv.index('--mixup-prob') + 1] == '0'
    assert argv[argv.index('--seed') + 1] == argv[argv.index('--subset-seed') + 1] == '1'


def rows_for(setting, values):
    return [dict(block='B1', setting=setting, model='resnet20_cifar', method=m, seed=s, recipe='cpu', epochs=10,
                 commit='abc', device='cpu', top1=v, top5=99.0, ece=5.0, seconds=60.0)
            for m, per_seed in values.items() for s, v in enumerate(per_seed)]


def test_csv_rows_resume_and_report(tmp_path):
    path = str(tmp_path / 'cifar.csv')
    rows = rows_for('LT-CIFAR-10 0.01', {'Mixup': [70.0, 72.0, 71.0], 'IC-Mixup': [74.0, 75.0, 74.5]})
    for row in rows:
        suite.append_row(path, row)
    back = suite.read_rows(path)
    assert [(r['method'], r['seed'], r['top1']) for r in back] == [(r['method'], r['seed'], r['top1']) for r in rows]
    text = cifar.report(back, 'cpu')
    assert '| Mixup | 3 | 71.00 ± 1.00 |' in text and '| 72.82 |' in text  # the paper's Mixup at LT 0.01
    # IC-Mixup - Mixup: diffs 4, 3, 3.5 -> mean 3.5, sd 0.5, t(2) = 4.303 -> +-1.24
    assert '| IC-Mixup − Mixup | 3 | +3.50 [+2.26, +4.74] | +3.99 |' in text
    assert cifar.report(back, 'paper') .count('|') == 0  # no paper-recipe rows: no table


def test_main_skips_finished_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'results'
    out.mkdir()
    done = [r for r in suite.plan(['B1'], seeds=1, extras=False)]
    for run in done[:5]:
        suite.append_row(str(out / 'cifar.csv'), dict(
            block=run.block, setting=run.setting, model=run.model, method=run.method, seed=run.seed, recipe='cpu',
            epochs=10,
            commit='abc', device='cpu', top1=50.0, top5=90.0, ece=3.0, seconds=1.0))
    started = []

    class NoPool:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def imap_unordered(self, fn, jobs):
            started.extend(job[0] for job in jobs)
            return iter(())

    monkeypatch.setattr(cifar.mp, 'get_context', lambda method: type('Ctx', (), {'Pool': NoPool}))
    monkeypatch.setattr(cifar, 'ensure_data', lambda data_dir, datasets: None)
    assert cifar.main(['--blocks', 'B1', '--seeds', '1', '--out', str(out), '--runs-dir', str(tmp_path / 'runs')]) == 0
    assert started == done[5:]
    assert (out / 'cifar.md').exists()
    assert '3 runs to do (5 already in' in capsys.readouterr().out


def test_report_goes_into_the_readme_between_its_markers(tmp_path, capsys):
    out = tmp_path / 'results'
    out.mkdir()
    for row in rows_for('LT-CIFAR-10 0.01', {'Mixup': [70.0, 72.0, 71.0], 'IC-Mixup': [74.0, 75.0, 74.5]}):
        suite.append_row(str(out / 'cifar.csv'), row)
    readme = tmp_path / 'README.md'
    readme.write_text('# title\n\nbefore\n<!-- cifar.md -->\nold table\n<!-- /cifar.md -->\nafter\n')
    argv = ['--report', '--out', str(out), '--runs-dir', str(tmp_path / 'runs'), '--readme', str(readme)]
    assert cifar.main(argv) == 0
    text = readme.read_text()
    assert text.startswith('# title\n\nbefore\n<!-- cifar.md -->\nRecipe `cpu`; 6 runs') and 'old table' not in text
    assert '\n#### B1: LT-CIFAR-10 0.01' in text and '\n### B1' not in text
    assert '| IC-Mixup − Mixup | 3 | +3.50 [+2.26, +4.74] | +3.99 |' in text
    assert text.endswith('<!-- /cifar.md -->\nafter\n')
    assert cifar.main(argv) == 0 and readme.read_text() == text  # a second splice changes nothing
    readme.write_text('no markers\n')
    with pytest.raises(SystemExit) as exit_:
        cifar.main(argv)
    assert exit_.value.code == 2 and 'has no <!-- cifar.md -->' in capsys.readouterr().err
    assert readme.read_text() == 'no markers\n'


def test_long_plan_puts_the_half_schedule_check_after_the_core_methods():
    runs = suite.plan(['L1', 'L2', 'L3'], seeds=3, extras=True, recipe='long')
    assert len(runs) == 3 * (4 + 3) + 3 * (3 + 3) + 3 * 4 + 1 and len(set(runs)) == len(runs)
    check = runs.index(suite.SCHEDULE_CHECK)
    core = [i for i, r in enumerate(runs) if r.method in suite.BLOCKS[r.block].core and r.block != 'L3'
            and r != suite.SCHEDULE_CHECK]
    assert check == max(core) + 1  # L1's and L2's core runs, then the check, then the extras and L3
    assert suite.SCHEDULE_CHECK not in suite.plan(['L1'], seeds=3, extras=False, recipe='cpu')
    argv = suite.train_argv(suite.SCHEDULE_CHECK, 'long', 'D', 'O')
    assert [os.path.relpath(argv[i + 1], suite.HPARAMS) for i, a in enumerate(argv) if a == '-c'] == [
        'cpu/cifar10_resnet20.yaml', 'long/schedule.yaml', 'methods/icmixup.yaml']
    assert argv[argv.index('--epochs') + 1] == '100'
    assert argv[argv.index('--decay-milestones') + 1:argv.index('--decay-milestones') + 4] == ['26', '51', '76']
    assert argv[argv.index('--experiment') + 1] == 'long-LT-CIFAR-10_0.01-IC-Mixup-0-e100'
    full = suite.train_argv(suite.Run('L1', 'LT-CIFAR-10 0.01', 'LA', 2), 'long', 'D', 'O')
    assert '--epochs' not in full and '--decay-milestones' not in full  # hparams/long/schedule.yaml decides


def test_a_cut_off_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """run_one hands train_icm.py --resume when the run's folder has last.pth.tar, and scales the seconds of the
    part it ran to the whole run."""
    run = suite.Run('L1', 'LT-CIFAR-10 0.01', 'ERM', 0)
    folder = tmp_path / suite.run_name(run, 'long')
    folder.mkdir()
    (folder / 'last.pth.tar').write_bytes(b'x')
    (folder / 'summary.csv').write_text('epoch,train_loss,eval_top1,eval_top5,eval_ece,lr\n'
                                        + ''.join(f'{e},1.0,,,,0.1\n' for e in range(150)))
    seen = []

    def fake_main(argv):
        seen.append(argv)
        with open(folder / 'summary.csv', 'a') as f:
            f.writelines(f'{e},0.5,{80 if e == 199 else ""},99,3,0.0008\n' for e in range(150, 200))
        return 0

    import train_icm
    monkeypatch.setattr(train_icm, 'main', fake_main)
    row = cifar.run_one((run, 'long', 'D', str(tmp_path), 'abc', 'cpu'))
    assert seen[0][-2:] == ['--resume', str(folder / 'last.pth.tar')]
    assert (row['epochs'], row['top1'], row['seed']) == (200, 80.0, 0)
    assert row['seconds'] < 10  # 50 of 200 epochs took a moment: x4


def long_rows(setting, block, values, recipe='long', epochs=200, ece=None, model='resnet20_cifar'):
    return [dict(block=block, setting=setting, model=model, method=m, seed=s, recipe=recipe, epochs=epochs,
                 commit='abc', device='cpu', top1=v, top5=99.0, ece=(ece or {}).get(m, 5.0), seconds=60.0)
            for m, per_seed in values.items() for s, v in enumerate(per_seed)]


def write_curve(runs_dir, run, finals):
    folder = runs_dir / suite.run_name(run, 'long')
    folder.mkdir(parents=True)
    with open(folder / 'summary.csv', 'w') as f:
        f.write('epoch,train_loss,eval_loss,eval_top1,eval_top5,eval_ece,lr\n')
        for epoch in range(run.epochs or 200):
            top1 = finals.get(epoch + 1, '')
            f.write(f'{epoch},1.0,{1.0 if top1 != "" else ""},{top1},,,0.1\n')


def test_converged_report(tmp_path):
    """The long recipe's report: its own tables (not the quick suite's), convergence after 100/150/200 epochs,
    the half-schedule check, published figures, and which quick-suite conclusions survive; the curves kept in a
    CSV that outlives the run folders."""
    import cifar_converged
    quick = long_rows('LT-CIFAR-10 0.01', 'B1', {'Mixup': [30, 31, 32], 'IC-Mixup': [50, 52, 51], 'ERM': [40, 40, 41]},
                      recipe='cpu', epochs=10)
    converged = long_rows('LT-CIFAR-10 0.01', 'L1', {'Mixup': [72, 73, 74], 'IC-Mixup': [72.5, 73.5, 73.0],
                                                     'ERM': [70, 71, 70.5]})
    check = long_rows('LT-CIFAR-10 0.01', 'L1', {'IC-Mixup': [72.8]}, epochs=100)
    rows = quick + converged + check
    runs_dir, out = tmp_path / 'runs', tmp_path / 'out'
    out.mkdir()
    for r in converged:
        write_curve(runs_dir, suite.Run('L1', r['setting'], r['method'], r['seed']), {100: 60.0, 150: r['top1'] - 0.5,
                                                                                      180: r['top1'] - 1,
                                                                                      190: r['top1'] - 0.5,
                                                                                      200: r['top1']})
    write_curve(runs_dir, suite.SCHEDULE_CHECK, {100: 72.8})
    text = cifar.report(rows, 'long')
    assert '### L1: LT-CIFAR-10 0.01 (200 epochs' in text and 'B1' not in text and '| ERM | 3 |' in text
    assert '| IC-Mixup | 3 | 73.00 ± 0.50 |' in text  # the check's 72.8 is not one of the seeds
    extra = cifar_converged.report(rows, str(runs_dir), str(out))
    assert '| LT-CIFAR-10 0.01 | IC-Mixup | 3 | 60.00 | 72.50 | 73.00 | +0.50 | 1.00 | 72.50 |' in extra
    assert 'top-1 72.80 after 100 epochs, 72.50 after 200: less than a point: 200 epochs are enough' in extra
    assert '| LT-CIFAR-10 0.01 | logit-adjusted loss (LA) | 77.89 | - |' in extra
    # IC-Mixup − Mixup: quick 20, 21, 19 -> +20 +-2.48; converged +0.5, +0.5, -1 -> no clear difference
    assert ('| LT-CIFAR-10 0.01 | ICM over Mixup | IC-Mixup − Mixup | +20.00 [+17.52, +22.48] | '
            in extra and 'no clear difference at convergence (there was one in the quick suite)' in extra)
    # Mixup − ERM: quick -10 [-12.5, -6.2...], converged +2 +2 +3.5 -> reverses
    assert 'reverses (gain at convergence)' in extra
    assert 'provisional' not in extra
    two_seeds = [r for r in rows if not (r['recipe'] == 'long' and r['seed'] == 2)]
    assert 'reverses (gain at convergence); provisional, 2 of 3 seeds' in cifar_converged.survival(two_seeds)
    assert (out / 'cifar-curves-long.csv').exists()
    import shutil
    shutil.rmtree(runs_dir)
    assert cifar_converged.report(rows, str(runs_dir), str(out)) == extra  # the curves outlive the folders


def test_verdicts():
    from cifar_converged import verdict
    assert verdict((2, 1, 3), (1, 0.5, 1.5)) == 'survives (gain)'
    assert verdict((2, 1, 3), (-1, -1.5, -0.5)) == 'reverses (loss at convergence)'
    assert verdict(None, (1, 0.5, 1.5)) == 'appears at convergence (gain)'
    assert verdict((0, -1, 1), (0, -1, 1)) == 'no clear difference at convergence'
    assert verdict((-2, -3, -1), (-2, -3, -1), lower_is_better=True) == 'survives (lower)'


def test_sigterm_ends_the_suite_with_its_workers(tmp_path):
    """`kill PID` of the suite takes its spawn workers with it (they would otherwise train on, unseen)."""
    script = tmp_path / 'suite.py'
    script.write_text(
        'import multiprocessing as mp, sys, time\n'
        f'sys.path.insert(0, {os.path.join(ROOT, "benchmarks")!r})\n'
        'import cifar\n'
        'if __name__ == "__main__":\n'
        '    cifar.stop_on_sigterm()\n'
        '    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:\n'
        '        result = pool.map_async(time.sleep, [120, 120])\n'
        '        print(*(p.pid for p in pool._pool), flush=True)\n'
        '        result.get()\n')
    suite = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in suite.stdout.readline().split()]
    assert len(workers) == 2
    time.sleep(0.5)
    suite.send_signal(signal.SIGTERM)
    assert suite.wait(timeout=60) == 128 + signal.SIGTERM

    def alive(pid):
        try:
            with open(f'/proc/{pid}/stat') as f:
                return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
        except FileNotFoundError:
            return False
    deadline = time.time() + 10
    while any(map(alive, workers)) and time.time() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, 'a worker outlived the suite'


def test_the_figure_of_converged_levels_leaves_out_the_half_schedule_check():
    """cifar-long.png draws each seed once: the 100-epoch check run is no fourth IC-Mixup seed (it was, before)."""
    rows = suite.read_rows(os.path.join(ROOT, 'benchmarks', 'results', 'cifar.csv'))
    check = [r for r in rows if suite.is_schedule_check(r)]
    assert check, 'cifar.csv has the half-schedule check run'
    levels = cifar.level_data(rows, 'long')['LT-CIFAR-10 0.01']
    full = [r['top1'] for r in rows
            if (r['recipe'], r['block'], r['method'], r['epochs']) == ('long', 'L1', 'IC-Mixup', 200)]
    assert sorted(levels['IC-Mixup']) == sorted(full) and check[0]['top1'] not in levels['IC-Mixup']


def test_the_capacity_ladder_plan_and_command_lines():
    """Block C1 as data: ResNet-20, WRN-16-4 and ResNet-34 in that order, each network's Mixup pair over every seed,
    then its RegMixup pair, then ERM; the network, the kept last batch and the evaluation interval reach
    train_icm.py; the earlier blocks' runs keep their folder names (a cut-off run must find its checkpoint)."""
    runs = suite.plan(['C1'], seeds=3, extras=False, recipe='long')
    assert [r.model for r in runs] == [m for m in suite.LADDER for _ in range(15)]
    assert [(r.method, r.seed) for r in runs[30:45]] == [
        (m, s) for group in (('Mixup', 'IC-Mixup'), ('RegMixup', 'IC-RegMixup'), ('ERM',)) for s in range(3)
        for m in group]
    argv = suite.train_argv(runs[-1], 'long', 'D', 'O')
    flag = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith('--')}
    assert flag['--model'] == 'resnet34_cifar' and flag['--val-interval'] == '20'
    assert flag['--train-samples-per-class'] == '50' and '--keep-last-batch' in argv
    assert suite.run_name(runs[-1], 'long') == 'long-CIFAR-10_50_per_class-ERM-2-resnet34_cifar'
    assert '--model' not in suite.train_argv(runs[0], 'long', 'D', 'O')
    assert suite.run_name(suite.Run('L1', 'LT-CIFAR-10 0.01', 'LA', 2), 'long') == 'long-LT-CIFAR-10_0.01-LA-2'


def test_results_files_carry_the_network(tmp_path, capsys):
    """Every row names its network; a file from before the column reads as ResNet-20, and appending to it is
    refused with one line (a row under the wrong header would shift every column) and the file left as it was."""
    old = tmp_path / 'cifar.csv'
    old.write_text('block,setting,method,seed,recipe,epochs,commit,device,top1,top5,ece,seconds\n'
                   'L1,LT-CIFAR-10 0.01,LA,0,long,200,abc,cpu,75.0,99.0,5.0,60.0\n')
    before = old.read_text()
    assert [r['model'] for r in suite.read_rows(str(old))] == ['resnet20_cifar']
    with pytest.raises(SystemExit) as exit_:
        suite.append_row(str(old), long_rows('LT-CIFAR-10 0.01', 'L1', {'LA': [76.0]})[0])
    assert exit_.value.code == 2 and 'not block,setting,model,method' in capsys.readouterr().err
    assert old.read_text() == before
    for name in ('cifar.csv', 'cifar-classes.csv', 'cifar-calibration.csv', 'cifar-curves-long.csv'):
        with open(os.path.join(ROOT, 'benchmarks', 'results', name)) as f:
            assert 'model' in f.readline().split(','), name


def test_ladder_report(tmp_path):
    """The ladder's gains per network (paired by seed, with their intervals and each seed's difference), its
    figures, and a run stuck at chance named, so that it cannot pass as a gain."""
    import cifar_converged
    import cifar_ladder
    values = {'resnet20_cifar': {'Mixup': [40, 41, 42], 'IC-Mixup': [41, 41, 44]},
              'resnet34_cifar': {'Mixup': [45, 46, 47], 'IC-Mixup': [49, 50, 51],
                                 'RegMixup': [50, 50, 50], 'IC-RegMixup': [52, 53, 51]}}
    rows = [r for model, v in values.items() for r in long_rows('CIFAR-10 50 per class', 'C1', v, model=model)]
    runs_dir, out = tmp_path / 'runs', tmp_path / 'out'
    out.mkdir()
    for r in rows:
        stuck = r['model'] == 'resnet34_cifar' and r['method'] == 'Mixup' and r['seed'] == 1
        write_curve(runs_dir, suite.row_run(r), {20: 10.0, 40: 10.3 if stuck else 30.0, 200: r['top1']})
    cifar_converged.report(rows, str(runs_dir), str(out))
    curves = cifar_converged.read_curves(str(out / 'cifar-curves-long.csv'))
    text = cifar_ladder.report(rows, curves, str(out))
    # ResNet-20: diffs 1, 0, 2 -> mean 1, sd 1, t(2) 4.303 / sqrt 3 -> +-2.48
    assert '| resnet20_cifar | IC-Mixup − Mixup | 3 | +1.00 [-1.48, +3.48] | +1.00, +0.00, +2.00 | +1.40 |' in text
    assert '| resnet34_cifar | IC-Mixup − Mixup | 3 | +4.00 [+4.00, +4.00] |' in text
    assert ('| resnet34_cifar | IC-RegMixup − RegMixup | 3 | +2.00 [-0.48, +4.48] | +2.00, +3.00, +1.00 | +2.37 |'
            in text)
    assert 'resnet20_cifar | IC-RegMixup' not in text  # no RegMixup runs on that network
    assert 'resnet34_cifar Mixup seed 1 (10.3 % at epoch 40)' in text and text.count('% at epoch') == 1
    assert (out / 'cifar-ladder.png').exists() and (out / 'cifar-ladder-curves.png').exists()
    assert cifar.level_data(rows, 'long') == {}  # the ladder stays out of the one-network figure
    assert '### C1: CIFAR-10 50 per class, resnet34_cifar (200 epochs' in cifar.report(rows, 'long')


def test_ladder_parameter_counts_are_the_networks():
    import timm
    import timm_icm  # noqa: F401  (registers the CIFAR networks)
    for name, count in suite.LADDER_PARAMS.items():
        assert sum(p.numel() for p in timm.create_model(name, num_classes=10).parameters()) == count, name


def test_merge_takes_a_pinned_clones_rows_once(tmp_path, capsys):
    """A suite run from a pinned clone writes its own cifar.csv (perhaps from before the model column); --merge
    adds the rows the checkout lacks, once, and names a missing file in one line."""
    out = tmp_path / 'results'
    out.mkdir()
    first, second = long_rows('LT-CIFAR-10 0.01', 'L1', {'LA': [75.0, 76.0]})
    suite.append_row(str(out / 'cifar.csv'), first)
    clone = tmp_path / 'clone.csv'
    old_fields = [f for f in suite.FIELDS if f != 'model']
    for row in (first, second):
        suite.append_row(str(clone), row, old_fields)
    argv = ['--merge', str(clone), '--out', str(out)]
    assert cifar.main(argv) == 0 and '1 rows added' in capsys.readouterr().out
    assert cifar.main(argv) == 0 and '0 rows added' in capsys.readouterr().out
    back = suite.read_rows(str(out / 'cifar.csv'))
    assert [(r['model'], r['seed'], r['top1']) for r in back] == [('resnet20_cifar', 0, 75.0),
                                                                  ('resnet20_cifar', 1, 76.0)]
    with pytest.raises(SystemExit) as exit_:
        cifar.main(['--merge', str(tmp_path / 'none.csv'), '--out', str(out)])
    assert exit_.value.code == 2 and 'none.csv: no such file' in capsys.readouterr().err


def test_tables_refresh_a_pages_numbers_and_keep_its_rows(tmp_path, capsys):
    """benchmarks/tables.py rewrites each table's numbers from the CSV its marker names, row by row as the page
    chose them; a row naming no setting is refused in one line."""
    import tables
    path = tmp_path / 'cifar.csv'
    for row in long_rows('LT-CIFAR-10 0.01', 'L1', {'Mixup': [70.0, 72.0, 71.0], 'IC-Mixup': [74.0, 75.0, 74.5]}):
        suite.append_row(str(path), row)
    page = tmp_path / 'page.md'
    page.write_text(f'text\n<!-- headline: {path}, recipe long -->\n'
                    '| data | comparison | seeds | difference | paper |\n|---|---|---|---|---|\n'
                    '| LT-CIFAR-10 0.01 | IC-Mixup − Mixup | 2 | +9.99 | - |\n<!-- /headline -->\n'
                    f'<!-- levels: {path}, recipe long -->\n'
                    '| data | method | seeds | top-1 | ECE | paper | published |\n|---|---|---|---|---|---|---|\n'
                    '| LT-CIFAR-10 0.01 | Mixup | 1 | 1 | 1 | 1 | 1 |\n<!-- /levels -->\nend\n')
    assert tables.main([str(page)]) == 0 and 'tables refreshed' in capsys.readouterr().out
    text = page.read_text()
    assert '| LT-CIFAR-10 0.01 | IC-Mixup − Mixup | 3 | +3.50 [+2.26, +4.74] | +3.99 |' in text
    assert '| LT-CIFAR-10 0.01 | Mixup | 3 | 71.00 ± 1.00 | 5.00 ± 0.00 | 72.82 | 72.8 |' in text
    assert text.startswith('text\n') and text.endswith('<!-- /levels -->\nend\n')
    assert tables.main([str(page)]) == 0 and 'up to date' in capsys.readouterr().out
    page.write_text(text.replace('| LT-CIFAR-10 0.01 | Mixup |', '| LT-CIFAR-11 | Mixup |'))
    with pytest.raises(SystemExit) as exit_:
        tables.main([str(page)])
    assert exit_.value.code == 2 and "'LT-CIFAR-11'" in capsys.readouterr().err
