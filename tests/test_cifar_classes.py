"""benchmarks/cifar_classes.py: a finished run's per-class counts reproduce its recorded top-1, and the head /
middle / tail table made from them."""
import csv
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
sys.path.insert(0, ROOT)
import cifar  # noqa: E402
import cifar_classes  # noqa: E402
import train_icm  # noqa: E402
from test_datasets import cifar10_files, write_folder  # noqa: E402

RUN = cifar.Run('B1', 'LT-CIFAR-10 0.01', 'IC-Mixup', 0)


@pytest.fixture
def finished_run(tmp_path):
    """A one-epoch train_icm.py run on a tiny long-tailed CIFAR-10, recorded in cifar.csv as the suite does."""
    rng = np.random.default_rng(0)
    files, _ = cifar10_files(rng, per_batch=40, n_test=60, labels=np.repeat(np.arange(10), 20))
    data = tmp_path / 'data'
    write_folder(str(data / 'cifar-10-batches-py'), files)
    runs, out = tmp_path / 'runs', tmp_path / 'results'
    name = cifar.run_name(RUN, 'cpu')
    argv = ['-c', os.path.join(ROOT, 'hparams', 'cpu', 'cifar10_resnet20.yaml'),
            '-c', os.path.join(ROOT, 'hparams', 'methods', 'icmixup.yaml'), '--imbalance-ratio', '0.5',
            '--epochs', '1', '--batch-size', '16', '--data-dir', str(data), '--output', str(runs),
            '--experiment', name]
    assert train_icm.main(argv) == 0
    with open(runs / name / 'summary.csv', newline='') as f:
        top1 = float(list(csv.DictReader(f))[-1]['eval_top1'])
    out.mkdir()
    cifar.append_row(str(out / 'cifar.csv'), dict(RUN._asdict(), recipe='cpu', epochs=1, commit='abc', device='cpu',
                                                  top1=top1, top5=0.0, ece=0.0, seconds=1.0))
    return data, runs, out


def test_per_class_counts_reproduce_the_recorded_top1(finished_run, capsys):
    data, runs, out = finished_run
    argv = ['--data-dir', str(data), '--runs-dir', str(runs), '--out', str(out)]
    assert cifar_classes.main(argv) == 0
    rows = cifar.read_class_rows(str(out / 'cifar-classes.csv'))
    assert [r['class'] for r in rows] == list(range(10))
    with open(runs / cifar.run_name(RUN, 'cpu') / 'class_counts.json') as f:
        counts = json.load(f)
    assert [r['train_images'] for r in rows] == counts and counts[0] == 20 and counts[-1] == 10  # the long tail
    assert sum(r['test_images'] for r in rows) == sum(r['predicted'] for r in rows) == 60
    recorded = cifar.read_rows(str(out / 'cifar.csv'))[0]['top1']
    assert 100 * sum(r['correct'] for r in rows) / 60 == pytest.approx(recorded, abs=0.01)
    assert f'top-1 {recorded:.2f} (recorded {recorded:.2f})' in capsys.readouterr().out
    assert cifar_classes.main(argv) == 0  # done runs are skipped
    assert len(cifar.read_class_rows(str(out / 'cifar-classes.csv'))) == 10
    assert 'Where the errors go' in cifar.report(cifar.read_rows(str(out / 'cifar.csv')), 'cpu', rows)


def test_a_checkpoint_that_does_not_give_the_recorded_top1_is_refused(finished_run, capsys):
    data, runs, out = finished_run
    rows = cifar.read_rows(str(out / 'cifar.csv'))
    rows[0]['top1'] += 5
    os.remove(out / 'cifar.csv')
    cifar.append_row(str(out / 'cifar.csv'), rows[0])
    with pytest.raises(SystemExit) as exit_:
        cifar_classes.main(['--data-dir', str(data), '--runs-dir', str(runs), '--out', str(out)])
    assert exit_.value.code == 2 and 'its last checkpoint gives top-1' in capsys.readouterr().err
    assert not (out / 'cifar-classes.csv').exists()


def class_rows(method, seed, correct, predicted, counts=(500, 300, 200, 100, 50, 20)):
    return [dict(setting='LT-CIFAR-10 0.01', method=method, seed=seed, recipe='cpu', **{'class': c},
                 train_images=n, test_images=10, correct=correct[c], predicted=predicted[c])
            for c, n in enumerate(counts)]


def test_head_middle_tail_table():
    rows = (class_rows('ERM', 0, [10, 8, 5, 3, 0, 0], [20, 15, 10, 10, 5, 0])
            + class_rows('ERM', 1, [10, 10, 5, 5, 0, 0], [22, 15, 10, 8, 5, 0])
            + class_rows('LA', 0, [6, 6, 6, 6, 6, 6], [10, 10, 10, 10, 10, 10]))
    text = '\n'.join(cifar.class_groups(rows))
    assert 'head: 500-300 training images' in text and 'tail: 50-20' in text and 'has 33 %' in text
    # ERM seed 0: head 18/20, middle 8/20, tail 0/20, 35/60 predicted as head; seed 1: 20/20, 10/20, 0, 37/60
    assert '| ERM | 2 | 95.0 | 45.0 | 0.0 | 60.0 |' in text
    assert '| LA | 1 | 60.0 | 60.0 | 60.0 | 33.3 |' in text
    assert cifar.class_groups([]) == []
