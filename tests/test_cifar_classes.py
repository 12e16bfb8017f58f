"""benchmarks/cifar_classes.py: a finished run's per-class counts and confidences match a plain-torch evaluation
of its checkpoint and reproduce its recorded top-1; the head / middle / tail and confidence tables made from them."""
import csv
import json
import os
import sys

import numpy as np
import pytest
import timm
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
sys.path.insert(0, ROOT)
import cifar  # noqa: E402
import suite  # noqa: E402
import cifar_classes  # noqa: E402
import train_icm  # noqa: E402
from timm_icm.metrics import temperature_scaled_ece  # noqa: E402
from test_datasets import CIFAR10_NAMES, cifar_blob, meta_blob, write_folder  # noqa: E402

RUN = suite.Run('B1', 'LT-CIFAR-10 0.01', 'IC-Mixup', 0)


def shaded(rng, labels):
    """Images whose brightness gives the class away, so that a few epochs learn them: a model that predicts
    many classes makes the per-class counts a fingerprint of the transform and the checkpoint, which a
    model at chance (one class for every image) is not."""
    base = (20 + 23 * np.asarray(labels))[:, None, None, None]
    return np.clip(base + rng.integers(-8, 9, size=(len(labels), 32, 32, 3)), 0, 255).astype(np.uint8)


TEST_LABELS = np.repeat(np.arange(10), 6)
TEST_IMAGES = shaded(np.random.default_rng(1), TEST_LABELS)


@pytest.fixture
def finished_run(tmp_path):
    """A short train_icm.py run on a tiny long-tailed CIFAR-10, recorded in cifar.csv as the suite does."""
    rng = np.random.default_rng(0)
    train_labels = rng.permutation(np.repeat(np.arange(10), 20))
    files = {f'data_batch_{b}': cifar_blob(shaded(rng, labels), labels, 'labels', False)
             for b, labels in enumerate(np.split(train_labels, 5), start=1)}
    files['test_batch'] = cifar_blob(TEST_IMAGES, TEST_LABELS, 'labels', False)
    files['batches.meta'] = meta_blob('label_names', CIFAR10_NAMES, False)
    data = tmp_path / 'data'
    write_folder(str(data / 'cifar-10-batches-py'), files)
    runs, out = tmp_path / 'runs', tmp_path / 'results'
    name = suite.run_name(RUN, 'cpu')
    argv = ['-c', os.path.join(ROOT, 'hparams', 'cpu', 'cifar10_resnet20.yaml'),
            '-c', os.path.join(ROOT, 'hparams', 'methods', 'icmixup.yaml'), '--imbalance-ratio', '0.5',
            '--epochs', '4', '--lr', '0.02', '--batch-size', '16', '--data-dir', str(data), '--output', str(runs),
            '--experiment', name]
    assert train_icm.main(argv) == 0
    with open(runs / name / 'summary.csv', newline='') as f:
        top1 = float(list(csv.DictReader(f))[-1]['eval_top1'])
    out.mkdir()
    suite.append_row(str(out / 'cifar.csv'), dict(RUN._asdict(), recipe='cpu', epochs=4, commit='abc', device='cpu',
                                                  top1=top1, top5=0.0, ece=0.0, seconds=1.0))
    return data, runs, out


def plain_torch_probabilities(checkpoint: str, images: np.ndarray) -> torch.Tensor:
    """The reference: the checkpoint's weights in a fresh model, CIFAR-10's normalisation by hand."""
    model = timm.create_model('resnet20_cifar', num_classes=10)
    model.load_state_dict(torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict'])
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    x = (torch.from_numpy(images).float() / 255 - mean) / std
    with torch.no_grad():
        return model.eval()(x.permute(0, 3, 1, 2)).softmax(dim=1)


def test_per_class_counts_reproduce_the_recorded_top1(finished_run, capsys):
    data, runs, out = finished_run
    argv = ['--data-dir', str(data), '--runs-dir', str(runs), '--out', str(out)]
    assert cifar_classes.main(argv) == 0
    rows = suite.read_class_rows(str(out / 'cifar-classes.csv'))
    assert [r['class'] for r in rows] == list(range(10))
    with open(runs / suite.run_name(RUN, 'cpu') / 'class_counts.json') as f:
        counts = json.load(f)
    assert [r['train_images'] for r in rows] == counts and counts[0] == 20 and counts[-1] == 10  # the long tail
    assert [r['test_images'] for r in rows] == [6] * 10
    recorded = suite.read_rows(str(out / 'cifar.csv'))[0]['top1']
    assert 100 * sum(r['correct'] for r in rows) / 60 == pytest.approx(recorded, abs=0.01)
    probs = plain_torch_probabilities(str(runs / suite.run_name(RUN, 'cpu') / 'last.pth.tar'), TEST_IMAGES)
    guess = probs.argmax(dim=1)
    assert [r['predicted'] for r in rows] == torch.bincount(guess, minlength=10).tolist()
    assert [r['correct'] for r in rows] == [int((guess[TEST_LABELS == c] == c).sum()) for c in range(10)]
    top = probs.amax(dim=1)
    assert [r['confidence'] for r in rows] == pytest.approx([float(top[TEST_LABELS == c].sum()) for c in range(10)],
                                                            abs=1e-3)
    assert recorded >= 20 and sum(r['predicted'] > 0 for r in rows) >= 3  # it learnt: the counts are a fingerprint
    calibration = suite.read_calibration_rows(str(out / 'cifar-calibration.csv'))
    assert len(calibration) == 1
    expected = temperature_scaled_ece(torch.log(probs), torch.from_numpy(TEST_LABELS))
    assert [calibration[0][k] for k in ('ece', 'ece_scaled', 'temperature')] == pytest.approx(
        [expected[k] for k in ('ece', 'ece_scaled', 'temperature')], abs=2e-3)
    assert f'top-1 {recorded:.2f} (recorded {recorded:.2f})' in capsys.readouterr().out
    assert cifar_classes.main(argv) == 0  # done runs are skipped
    assert len(suite.read_class_rows(str(out / 'cifar-classes.csv'))) == 10
    assert len(suite.read_calibration_rows(str(out / 'cifar-calibration.csv'))) == 1
    assert 'Where the errors go' in cifar.report(suite.read_rows(str(out / 'cifar.csv')), 'cpu', rows)


def test_a_checkpoint_that_does_not_give_the_recorded_top1_is_refused(finished_run, capsys):
    data, runs, out = finished_run
    rows = suite.read_rows(str(out / 'cifar.csv'))
    rows[0]['top1'] += 5
    os.remove(out / 'cifar.csv')
    suite.append_row(str(out / 'cifar.csv'), rows[0])
    with pytest.raises(SystemExit) as exit_:
        cifar_classes.main(['--data-dir', str(data), '--runs-dir', str(runs), '--out', str(out)])
    assert exit_.value.code == 2 and 'its last checkpoint gives top-1' in capsys.readouterr().err
    assert not (out / 'cifar-classes.csv').exists()


def class_rows(method, seed, correct, predicted, confidence=(5.0,) * 6, counts=(500, 300, 200, 100, 50, 20)):
    return [dict(setting='LT-CIFAR-10 0.01', method=method, seed=seed, recipe='cpu', **{'class': c},
                 train_images=n, test_images=10, correct=correct[c], predicted=predicted[c], confidence=confidence[c])
            for c, n in enumerate(counts)]


ERM_0 = class_rows('ERM', 0, [10, 8, 5, 3, 0, 0], [20, 15, 10, 10, 5, 0], [9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
ERM_1 = class_rows('ERM', 1, [10, 10, 5, 5, 0, 0], [22, 15, 10, 8, 5, 0], [9.5, 9.5, 8.0, 6.0, 6.0, 5.0])
LA_0 = class_rows('LA', 0, [6, 6, 6, 6, 6, 6], [10, 10, 10, 10, 10, 10])


def test_head_middle_tail_table():
    text = '\n'.join(cifar.class_groups(ERM_0 + ERM_1 + LA_0))
    assert 'head: 500-300 training images' in text and 'tail: 50-20' in text and 'has 33 %' in text
    # ERM seed 0: head 18/20, middle 8/20, tail 0/20, 35/60 predicted as head; seed 1: 20/20, 10/20, 0, 37/60
    assert '| ERM | 2 | 95.0 | 45.0 | 0.0 | 60.0 |' in text
    assert '| LA | 1 | 60.0 | 60.0 | 60.0 | 33.3 |' in text
    assert cifar.class_groups([]) == []


def test_confidence_table():
    text = '\n'.join(cifar.confidence_table(ERM_0 + ERM_1 + LA_0))
    # ERM: top-1 26/60 and 30/60, confidence 39/60 and 44/60: means 46.7 % and 69.2 %; LA: 36/60, 30/60
    assert '| ERM | 2 | 46.7 | 69.2 | +22.5 |' in text
    assert '| LA | 1 | 60.0 | 50.0 | -10.0 |' in text
    assert cifar.confidence_table([]) == []
