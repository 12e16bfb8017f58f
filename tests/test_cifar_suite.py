"""benchmarks/cifar.py without training: the plan, resuming from the CSV, and the report made from the CSV alone."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import cifar  # noqa: E402


def test_plan_runs_each_blocks_core_first_then_extras_then_b3():
    runs = cifar.plan(['B1', 'B2', 'B3'], seeds=3, extras=True)
    assert len(runs) == 3 * (8 + 3) + 3 * (4 + 3) + 3 * 2 * 6
    assert len(set(runs)) == len(runs)
    kinds = [('extra' if r.method in cifar.BLOCKS[r.block].extras else r.block) for r in runs]
    first = {k: kinds.index(k) for k in set(kinds)}
    last = {k: len(kinds) - 1 - kinds[::-1].index(k) for k in set(kinds)}
    assert last['B1'] < first['B2'] and last['B2'] < first['extra'] and last['extra'] < first['B3']
    core = cifar.plan(['B1', 'B2'], seeds=3, extras=False)
    assert len(core) == 36 and {r.seed for r in core} == {0, 1, 2}
    # seed-major: every method of seed 0 before any of seed 1, so pairs complete together
    b1 = [r.seed for r in core if r.block == 'B1']
    assert b1 == sorted(b1)


def test_every_method_and_setting_resolves_to_files():
    for name, (method_file, _) in cifar.METHODS.items():
        assert os.path.isfile(os.path.join(cifar.HPARAMS, 'methods', method_file)), name
    for setting in cifar.SETTINGS.values():
        assert os.path.isfile(os.path.join(cifar.HPARAMS, 'cpu', f'{setting.dataset}_resnet20.yaml'))
        assert os.path.isfile(os.path.join(cifar.HPARAMS, 'paper', f'{setting.dataset}_resnet34.yaml'))
    argv = cifar.train_argv(cifar.Run('B1', 'LT-CIFAR-10 0.01', 'ICM contrast, no mixing', 1), 'cpu', 'D', 'O')
    assert argv[argv.index('--epochs') + 1] == '10' and argv[argv.index('--mixup-prob') + 1] == '0'
    assert argv[argv.index('--seed') + 1] == argv[argv.index('--subset-seed') + 1] == '1'


def rows_for(setting, values):
    return [dict(block='B1', setting=setting, method=m, seed=s, recipe='cpu', epochs=10, commit='abc', device='cpu',
                 top1=v, top5=99.0, ece=5.0, seconds=60.0)
            for m, per_seed in values.items() for s, v in enumerate(per_seed)]


def test_csv_rows_resume_and_report(tmp_path):
    path = str(tmp_path / 'cifar.csv')
    rows = rows_for('LT-CIFAR-10 0.01', {'Mixup': [70.0, 72.0, 71.0], 'IC-Mixup': [74.0, 75.0, 74.5]})
    for row in rows:
        cifar.append_row(path, row)
    back = cifar.read_rows(path)
    assert [(r['method'], r['seed'], r['top1']) for r in back] == [(r['method'], r['seed'], r['top1']) for r in rows]
    text = cifar.report(back, 'cpu')
    assert '| Mixup | 3 | 71.00 ± 1.00 |' in text and '| 72.82 |' in text  # the paper's Mixup at LT 0.01
    # IC-Mixup - Mixup: diffs 4, 3, 3.5 -> mean 3.5, sd 0.5, t(2) = 4.303 -> +-1.24
    assert '| IC-Mixup − Mixup | 3 | +3.50 [+2.26, +4.74] | +3.99 |' in text
    assert cifar.report(back, 'paper') .count('|') == 0  # no paper-recipe rows: no table


def test_main_skips_finished_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'results'
    out.mkdir()
    done = [r for r in cifar.plan(['B1'], seeds=1, extras=False)]
    for run in done[:5]:
        cifar.append_row(str(out / 'cifar.csv'), dict(
            block=run.block, setting=run.setting, method=run.method, seed=run.seed, recipe='cpu', epochs=10,
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
        cifar.append_row(str(out / 'cifar.csv'), row)
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
