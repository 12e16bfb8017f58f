"""Every file the program reads may be broken, every setting may contradict the data: one line, exit code 2.

Each case runs the real entry point (``train_icm.main``, ``timm_icm.launch.main``, ``timm_icm.analyze.main``,
``timm_icm.report.main``) on tiny files written here, and checks the exit code, that stderr is one line
without a traceback, and the words of that line. The kill-anywhere test at the end kills a training run
(SIGKILL) at every step of every file it writes and resumes it.
"""
import builtins
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch

import train_icm
from timm_icm import analyze, files, launch, report
from test_datasets import CIFAR10_NAMES, cifar10_files, creates_file, write_fmnist, write_folder, write_idx, write_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(ROOT, 'tests', 'upstream_standin', 'train.py')
TINY = ['--dataset', 'torch/fashion_mnist', '--model', 'resnet20_cifar', '--num-classes', '10',
        '--input-size', '1', '28', '28', '--mean', '0.3', '--std', '0.3', '--smoothing', '0', '-b', '8',
        '--lr', '0.01', '--sched', 'cosine', '--warmup-epochs', '0', '-j', '0', '--log-interval', '1000',
        '--mixup', '0.2', '--icm', '--device', 'cpu']


# ----------------------------------------------------------------------------- helpers

def one_line_error(capsys, call, *words, prefix='train_icm.py: error: '):
    """``call()`` must exit with code 2 and one stderr line, starting with ``prefix``, holding ``words``."""
    capsys.readouterr()
    try:
        code = call()
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and 'Traceback' not in err, err[-2000:]
    assert lines[0].startswith(prefix), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def train_error(capsys, argv, *words):
    return one_line_error(capsys, lambda: train_icm.main(argv), *words)


def make_unreadable(path, monkeypatch):
    """``path`` as a file this process may not read: chmod 000, or, as root (where chmod does not stop
    reads), every ``open`` of it failing the way chmod 000 makes it fail."""
    path = str(path)
    if os.geteuid() != 0:
        mode = os.stat(path).st_mode
        os.chmod(path, 0)
        return lambda: os.chmod(path, mode)
    target = os.path.realpath(path)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(file) == target:
            raise PermissionError(13, 'Permission denied', os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, 'open', guarded_open)
    return lambda: None


@pytest.fixture
def unreadable(monkeypatch):
    restore = []
    yield lambda path: restore.append(make_unreadable(path, monkeypatch))
    for undo in restore:
        undo()


@pytest.fixture(scope='module')
def fmnist(tmp_path_factory):
    """Tiny Fashion-MNIST in its original IDX .gz files: 40 training images, 8 test images, labels 0-9."""
    root = tmp_path_factory.mktemp('fmnist')
    write_fmnist(str(root), np.random.default_rng(0), n_train=40, n_test=8)
    return str(root)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, fmnist):
    """A finished 2-epoch train_icm.py run: args.yaml, summary.csv, checkpoint-0/1, last, model_best."""
    out = tmp_path_factory.mktemp('runs')
    with redirect_stdout(io.StringIO()):
        assert train_icm.main(TINY + ['--data-dir', fmnist, '--output', str(out), '--experiment', 'run',
                                      '--epochs', '2']) == 0
    return out / 'run'


@pytest.fixture
def run_copy(run_dir, tmp_path):
    copy = tmp_path / 'run'
    shutil.copytree(run_dir, copy)
    return copy


def resume_argv(fmnist, run, checkpoint, *flags):
    return TINY + ['--data-dir', fmnist, '--output', str(run.parent), '--experiment', run.name, '--epochs', '3',
                   '--resume', str(checkpoint), *flags]


# ----------------------------------------------------------------------------- configs (-c)

@pytest.mark.parametrize('case, content, words', [
    ('missing', None, ['does not exist']),
    ('directory', 'dir', ['is a directory, not a file']),
    ('empty', b'', ['is empty (0 bytes)']),
    ('truncated', b'model: resnet20_cifar\nmixup: [0.2\n', ['is not valid YAML']),
    ('binary', b'\x80\x81\xfe\xff\x00', ['is truncated or not a text file']),
    ('not a mapping', b'- mixup\n- icm\n', ['must be a mapping of flag names to values; got list']),
])
def test_broken_config(tmp_path, capsys, case, content, words):
    path = tmp_path / 'exp.yaml'
    if content == 'dir':
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    line = train_error(capsys, ['-c', str(path)], f'config {path}', *words)
    assert line.endswith('(see --help)')


def test_unreadable_config(tmp_path, capsys, unreadable):
    path = tmp_path / 'exp.yaml'
    path.write_text('mixup: 0.2\n')
    unreadable(path)
    train_error(capsys, ['-c', str(path)], f'config {path}: cannot be read (permission denied)')


def test_broken_config_through_the_launcher(tmp_path, capsys):
    path = tmp_path / 'exp.yaml'
    path.write_bytes(b'icm: true\nmixup: [0.2\n')
    one_line_error(capsys, lambda: launch.main([STANDIN, '-c', str(path), '--icm']), f'config {path}',
                   'is not valid YAML', prefix='python -m timm_icm.launch: error: ')


# ----------------------------------------------------------------------------- data files

def fmnist_copy(fmnist, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(fmnist, root)
    return root


def gz_bytes(path):
    return open(path, 'rb').read()


@pytest.mark.parametrize('case, words', [
    ('empty', ['is empty (0 bytes)']),
    ('truncated gzip', ['is truncated or not a complete gzip file']),
    ('not IDX', ['is not an IDX file']),
    ('truncated IDX', ['is truncated or corrupt: its IDX header says shape (40, 28, 28)']),
    ('unreadable', ['cannot be read (permission denied)']),
])
def test_broken_fashion_mnist_file(fmnist, tmp_path, capsys, unreadable, case, words):
    root = fmnist_copy(fmnist, tmp_path)
    images = root / 'train-images-idx3-ubyte.gz'
    blob = gz_bytes(images)
    if case == 'empty':
        images.write_bytes(b'')
    elif case == 'truncated gzip':
        images.write_bytes(blob[:len(blob) // 2])
    elif case == 'not IDX':
        images.write_bytes(b'<html>not found</html>')
    elif case == 'truncated IDX':
        import gzip
        images.write_bytes(gzip.compress(gzip.decompress(blob)[:1000]))
    else:
        unreadable(images)
    line = train_error(capsys, TINY + ['--data-dir', str(root)], f'fashion_mnist images file {images}', *words)
    if case != 'unreadable':
        assert line.endswith('replace it with a complete copy (download or unpack the data set again)')


def test_fashion_mnist_files_that_disagree(fmnist, tmp_path, capsys):
    root = fmnist_copy(fmnist, tmp_path)
    other = tmp_path / 'other'
    write_fmnist(str(other), np.random.default_rng(1), n_train=12, n_test=8)
    shutil.copy(other / 'train-labels-idx1-ubyte.gz', root / 'train-labels-idx1-ubyte.gz')
    train_error(capsys, TINY + ['--data-dir', str(root)], 'holds (40, 28, 28) images but',
                'holds (12,) labels: one of them is from another copy')


def test_data_dir_is_a_file(fmnist, capsys):
    path = os.path.join(fmnist, 'train-images-idx3-ubyte.gz')
    train_error(capsys, TINY + ['--data-dir', path], f"the data root '{path}' is not a folder")


@pytest.fixture
def cifar10(tmp_path):
    files_, _ = cifar10_files(np.random.default_rng(0), per_batch=4, n_test=4)
    return files_


CIFAR = ['--dataset', 'torch/cifar10', '--model', 'resnet20_cifar', '--num-classes', '10', '-b', '4',
         '--input-size', '3', '32', '32', '-j', '0', '--epochs', '1', '--device', 'cpu']


@pytest.mark.parametrize('case, words', [
    ('empty', ['data_batch_3: is empty (0 bytes)']),
    ('truncated', ['data_batch_3: is truncated or not a CIFAR pickle']),
    ('a list', ['data_batch_3: holds a pickled list, not a CIFAR file (a dict)']),
    ('no data', ["data_batch_3: has no 'data' entry: not a CIFAR batch of this variant"]),
    ('short pixels', ['data_batch_3: holds 6000 bytes of pixels for 4 labels, not 4 images of 32x32x3']),
    ('directory', ['data not found', 'expected data_batch_1']),
    ('broken meta', ["batches.meta: has no 'label_names' list"]),
])
def test_broken_cifar_pickle(tmp_path, cifar10, capsys, case, words):
    import pickle
    folder = tmp_path / 'cifar-10-batches-py'
    write_folder(str(folder), cifar10)
    batch = folder / 'data_batch_3'
    if case == 'empty':
        batch.write_bytes(b'')
    elif case == 'truncated':
        batch.write_bytes(cifar10['data_batch_3'][:500])
    elif case == 'a list':
        batch.write_bytes(pickle.dumps([1, 2, 3]))
    elif case == 'no data':
        batch.write_bytes(pickle.dumps({'labels': [0, 1, 2, 3]}))
    elif case == 'short pixels':
        batch.write_bytes(pickle.dumps({'labels': [0, 1, 2, 3], 'data': np.zeros((4, 1500), np.uint8)}))
    elif case == 'directory':
        batch.unlink()
        batch.mkdir()
    else:
        (folder / 'batches.meta').write_bytes(pickle.dumps({'names': []}))
    train_error(capsys, CIFAR + ['--data-dir', str(tmp_path)], *words)


@pytest.mark.parametrize('case, words', [
    ('empty', ['ciFAIR archive', 'ciFAIR-10.zip: is empty (0 bytes)']),
    ('truncated', ['ciFAIR archive', 'ciFAIR-10.zip: is truncated or not a zip archive']),
    ('corrupt member', ['cifair10 file', 'ciFAIR-10.zip:ciFAIR-10/test_batch: is truncated or not a complete '
                                        'zip archive']),
])
def test_broken_cifair_zip(tmp_path, cifar10, capsys, case, words):
    path = tmp_path / 'ciFAIR-10.zip'
    write_zip(str(path), 'ciFAIR-10', cifar10)
    blob = path.read_bytes()
    if case == 'empty':
        path.write_bytes(b'')
    elif case == 'truncated':
        path.write_bytes(blob[:len(blob) // 2])
    else:  # flip bytes inside the test batch: its CRC no longer matches
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo('ciFAIR-10/test_batch')
        start = info.header_offset + 30 + len(info.filename) + 100
        path.write_bytes(blob[:start] + bytes(b ^ 0xFF for b in blob[start:start + 50]) + blob[start + 50:])
    argv = CIFAR + ['--data-dir', str(tmp_path), '--dataset', 'cifair10']
    train_error(capsys, argv, *words)


# ----------------------------------------------------------------------------- pickles that would run code

REFUSED_DATA = 'refused to unpickle io.open (a CIFAR file holds only numpy arrays, lists and dicts)'


def _cifar10_with_a_file_creating_pickle(tmp_path, cifar10, where):
    """CIFAR-10's files with one of them (``where``) pickled so that ``pickle.load`` creates ``tmp_path/created``;
    the flags that read them and the file as the error names it."""
    import pickle
    evil = creates_file(tmp_path / 'created')
    files_ = dict(cifar10)
    if where == 'meta':
        name = 'batches.meta'
        files_[name] = pickle.dumps({'label_names': CIFAR10_NAMES, 'num_vis': evil}, protocol=2)
    else:
        name = 'test_batch' if where == 'zip member' else 'data_batch_3'
        files_[name] = pickle.dumps({'labels': [0, 1, 2, 3], 'data': np.zeros((4, 3072), np.uint8),
                                     'batch_label': evil}, protocol=2)
    if where in ('batch', 'meta'):
        write_folder(str(tmp_path / 'cifar-10-batches-py'), files_)
        return ['--dataset', 'torch/cifar10'], f'cifar10 file {tmp_path / "cifar-10-batches-py" / name}'
    write_zip(str(tmp_path / 'ciFAIR-10.zip'), 'ciFAIR-10', files_)
    dataset = 'cifair10' if where == 'zip member' else 'deic_cifair10'
    return ['--dataset', dataset], f'{dataset} file {tmp_path / "ciFAIR-10.zip"}:ciFAIR-10/{name}'


@pytest.mark.parametrize('where', ['batch', 'meta', 'zip member', 'DEIC zip member'])
def test_cifar_pickle_that_would_create_a_file(tmp_path, cifar10, capsys, where):
    flags, shown = _cifar10_with_a_file_creating_pickle(tmp_path, cifar10, where)
    line = train_error(capsys, CIFAR + ['--data-dir', str(tmp_path), *flags], f'{shown}: {REFUSED_DATA}')
    assert line.endswith('replace it with a complete copy (download or unpack the data set again)')
    assert not (tmp_path / 'created').exists()


def test_cifar_pickle_that_would_create_a_file_through_the_launcher(tmp_path, cifar10, capsys, root_log_handlers):
    flags, shown = _cifar10_with_a_file_creating_pickle(tmp_path, cifar10, 'batch')
    argv = [STANDIN, *flags, '--data-dir', str(tmp_path), '--mixup', '0.2', '--icm', '--summary', str(tmp_path / 's')]
    one_line_error(capsys, lambda: launch.main(argv), f'{shown}: {REFUSED_DATA}',
                   prefix='python -m timm_icm.launch: error: ')
    assert not (tmp_path / 'created').exists()


def test_broken_deic_archive_and_too_few_images(tmp_path, cifar10, capsys):
    path = tmp_path / 'ciFAIR-10.zip'
    write_zip(str(path), 'ciFAIR-10', cifar10)
    argv = CIFAR + ['--data-dir', str(tmp_path), '--dataset', 'deic_cifair10', '--train-split', 'trainval',
                    '--val-split', 'test']
    train_error(capsys, argv, 'deic_cifair10: class', 'fewer than the 50 the DEIC \'trainval\' split needs')
    path.write_bytes(path.read_bytes()[:300])
    train_error(capsys, argv, f'ciFAIR archive {path}: is truncated or not a zip archive')


def test_split_the_data_set_lacks(fmnist, capsys):
    train_error(capsys, TINY + ['--data-dir', fmnist, '--val-split', 'holdout'],
                "fashion_mnist: split must be one of", "got 'holdout'")


def test_missing_class_map(tmp_path, capsys):
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    train_error(capsys, ['--data-dir', str(tmp_path), '--class-map', str(tmp_path / 'map.txt'), '--model',
                         'resnet20_cifar', '--device', 'cpu'], f'--class-map {tmp_path / "map.txt"}: does not exist')


# ----------------------------------------------------------------------------- --resume

@pytest.mark.parametrize('case, words', [
    ('missing', ['does not exist']),
    ('directory', ['is a directory, not a file']),
    ('empty', ['is empty (0 bytes)']),
    ('truncated', ['is truncated or not a torch checkpoint']),
    ('yaml', ['is truncated or not a torch checkpoint']),
    ('a list', ['holds a list, not a checkpoint']),
    ('unreadable', ['cannot be read (permission denied)']),
])
def test_broken_resume_checkpoint_names_the_newest_that_loads(fmnist, run_copy, capsys, unreadable, case, words):
    broken = run_copy / 'checkpoint-5.pth.tar'
    blob = (run_copy / 'last.pth.tar').read_bytes()
    if case == 'directory':
        broken.mkdir()
    elif case == 'empty':
        broken.write_bytes(b'')
    elif case == 'truncated':
        broken.write_bytes(blob[:len(blob) - 1000])
    elif case == 'yaml':
        shutil.copy(run_copy / 'args.yaml', broken)
    elif case == 'a list':
        torch.save([1, 2], broken)
    elif case == 'unreadable':
        shutil.copy(run_copy / 'last.pth.tar', broken)
        unreadable(broken)
    # The newest checkpoint that loads: checkpoint-1 (epoch 1; last.pth.tar holds the same epoch).
    train_error(capsys, resume_argv(fmnist, run_copy, broken), f'--resume {broken}: ', *words,
                f'resume from {run_copy / "checkpoint-1.pth.tar"} (epoch 1), the newest checkpoint in {run_copy} '
                f'that loads')


def test_truncated_last_checkpoint_points_to_an_older_one(fmnist, run_copy, capsys):
    last = run_copy / 'last.pth.tar'
    blob = last.read_bytes()
    last.unlink()  # a hard link of checkpoint-1: write a new file, leave that one intact
    last.write_bytes(blob[:100])
    (run_copy / 'checkpoint-1.pth.tar').write_bytes(b'')
    train_error(capsys, resume_argv(fmnist, run_copy, last), f'--resume {last}: is truncated',
                f'resume from {run_copy / "checkpoint-0.pth.tar"} (epoch 0)')


def test_resume_folder_points_inside_it(fmnist, run_copy, capsys):
    train_error(capsys, resume_argv(fmnist, run_copy, run_copy), f'--resume {run_copy}: is a directory',
                f'resume from {run_copy / "checkpoint-1.pth.tar"}')


def test_no_checkpoint_loads_start_again(fmnist, tmp_path, capsys):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'last.pth.tar').write_bytes(b'PK\x03\x04 cut')
    train_error(capsys, resume_argv(fmnist, tmp_path / 'run', tmp_path / 'run' / 'last.pth.tar'),
                'is truncated or not a torch checkpoint', f'no checkpoint in {tmp_path / "run"} loads: start the run '
                                                          f'again without --resume')


@pytest.mark.parametrize('flags, words', [
    (['--model', 'resnet32_cifar'], ['--model resnet32_cifar (checkpoint: resnet20_cifar)']),
    (['--num-classes', '12'], ['--num-classes 12 (checkpoint: 10)']),
    (['--icm-axes', 'class', '--icm-unmixed', 'ce'], ['--icm-axes class (checkpoint: both)',
                                                      '--icm-unmixed ce (checkpoint: icm)']),
    (['--regmixup', '--mixup', '2'], ['--regmixup on (checkpoint: off)']),
    (['--opt', 'adamw'], ['--opt adamw (checkpoint: sgd)']),
])
def test_resume_with_other_settings(fmnist, run_dir, capsys, flags, words):
    line = train_error(capsys, resume_argv(fmnist, run_dir, run_dir / 'last.pth.tar', *flags),
                       f'--resume {run_dir / "last.pth.tar"}: this run differs from the one that wrote the checkpoint',
                       *words, f'resume with the settings of that run (-c {run_dir / "args.yaml"})')
    assert line.endswith('or start a new run without --resume')


def test_resume_with_an_optimizer_state_that_does_not_fit(fmnist, run_dir, capsys):
    """Weight decay 0: one parameter group where the checkpoint's optimizer has two."""
    train_error(capsys, resume_argv(fmnist, run_dir, run_dir / 'last.pth.tar', '--weight-decay', '0'),
                f'--resume {run_dir / "last.pth.tar"}: cannot restore the training state (loaded state dict has a '
                f'different number of parameter groups)', 'or add --no-resume-opt to keep its weights only')


def test_resume_with_the_run_args_yaml_works(fmnist, run_copy):
    argv = ['-c', str(run_copy / 'args.yaml'), '--resume', str(run_copy / 'last.pth.tar'), '--epochs', '3',
            '--output', str(run_copy.parent), '--experiment', run_copy.name]
    with redirect_stdout(io.StringIO()):
        assert train_icm.main(argv) == 0
    header, rows = files.read_csv(str(run_copy / 'summary.csv'), 'summary')
    assert [r[0] for r in rows] == ['0', '1', '2']


def test_resume_weights_of_another_model_without_args(fmnist, run_copy, capsys):
    checkpoint = files.load_checkpoint(str(run_copy / 'last.pth.tar'))
    del checkpoint['args']
    checkpoint['state_dict'] = {k: v for k, v in checkpoint['state_dict'].items() if not k.startswith('fc.')}
    checkpoint['state_dict']['head.weight'] = torch.zeros(3)
    torch.save(checkpoint, run_copy / 'foreign.pth.tar')
    train_error(capsys, resume_argv(fmnist, run_copy, run_copy / 'foreign.pth.tar'),
                'its weights do not fit resnet20_cifar with 10 classes: 2 missing (e.g. fc.weight), 1 unexpected '
                '(e.g. head.weight)')


# ----------------------------------------------------------------------------- --initial-checkpoint

@pytest.mark.parametrize('case, words', [
    ('missing', ['does not exist']),
    ('empty', ['is empty (0 bytes)']),
    ('truncated', ['is truncated or not a torch checkpoint']),
    ('other model', ['its weights do not fit resnet20_cifar with 5 classes and 1 input channel(s): 2 tensor(s) '
                     'of another shape (e.g. fc.weight: [10, 64] in the file, [5, 64] in the model)']),
])
def test_broken_initial_checkpoint(fmnist, run_dir, tmp_path, capsys, case, words):
    path = tmp_path / 'init.pth.tar'
    if case == 'empty':
        path.write_bytes(b'')
    elif case == 'truncated':
        path.write_bytes((run_dir / 'last.pth.tar').read_bytes()[:5000])
    elif case == 'other model':
        path = run_dir / 'last.pth.tar'
    argv = TINY + ['--data-dir', fmnist, '--initial-checkpoint', str(path), '--dry-run', '--num-classes', '5']
    train_error(capsys, argv, f'--initial-checkpoint {path}: ', *words)


# ----------------------------------------------------------------------------- checkpoints that would run code

REFUSED_CHECKPOINT = 'refused to unpickle io.open (a checkpoint holds only tensors, numbers, strings and containers)'


def file_creating_checkpoint(run, path, marker):
    """The run's last checkpoint with one more entry, pickled so that ``torch.load(weights_only=False)`` creates
    ``marker``."""
    checkpoint = files.load_checkpoint(str(run / 'last.pth.tar'))
    checkpoint['note'] = creates_file(marker)
    torch.save(checkpoint, path)
    return path


def test_resume_checkpoint_that_would_create_a_file(fmnist, run_copy, tmp_path, capsys):
    evil = file_creating_checkpoint(run_copy, run_copy / 'checkpoint-5.pth.tar', tmp_path / 'created')
    train_error(capsys, resume_argv(fmnist, run_copy, evil), f'--resume {evil}: {REFUSED_CHECKPOINT}',
                f'resume from {run_copy / "checkpoint-1.pth.tar"} (epoch 1)')
    assert not (tmp_path / 'created').exists()


def test_initial_checkpoint_that_would_create_a_file(fmnist, run_dir, tmp_path, capsys):
    evil = file_creating_checkpoint(run_dir, tmp_path / 'init.pth.tar', tmp_path / 'created')
    argv = TINY + ['--data-dir', fmnist, '--initial-checkpoint', str(evil), '--dry-run']
    train_error(capsys, argv, f'--initial-checkpoint {evil}: {REFUSED_CHECKPOINT}')
    assert not (tmp_path / 'created').exists()
    torch.load(evil, weights_only=False)  # the same file read unsafely: it does run code
    assert (tmp_path / 'created').exists()


# ----------------------------------------------------------------------------- settings against the data

def test_num_classes_below_the_labels(fmnist, capsys):
    argv = TINY + ['--data-dir', fmnist, '--num-classes', '5']
    train_error(capsys, argv, '--num-classes 5, but the training set of torch/fashion_mnist holds class labels '
                              'up to 9: set --num-classes 10')


def test_labels_above_the_model_default(fmnist, tmp_path, capsys):
    root = fmnist_copy(fmnist, tmp_path)
    (root / 'train-labels-idx1-ubyte.gz').unlink()
    write_idx(str(root / 'train-labels-idx1-ubyte'), np.arange(40) % 12, gz=True)  # 12 classes
    argv = [a for a in TINY if a not in ('--num-classes', '10')] + ['--data-dir', str(root)]
    train_error(capsys, argv, 'resnet20_cifar has 10 outputs (its default; no --num-classes), but the training set',
                'holds class labels up to 11: set --num-classes 12')


def test_eval_labels_above_num_classes(fmnist, tmp_path, capsys):
    root = fmnist_copy(fmnist, tmp_path)
    (root / 't10k-labels-idx1-ubyte.gz').unlink()
    write_idx(str(root / 't10k-labels-idx1-ubyte'), [0, 1, 2, 3, 4, 5, 6, 10], gz=True)
    train_error(capsys, TINY + ['--data-dir', str(root)], '--num-classes 10, but the evaluation set',
                'holds class labels up to 10: set --num-classes 11')


@pytest.mark.parametrize('flags, words', [
    (['--in-chans', '3'], ['--in-chans 3 and --input-size 1 28 28 disagree on the number of channels']),
    (['--input-img-mode', 'RGB'], ['the training images reach the model as [3, 28, 28]', 'takes 1 channel(s)',
                                   'or --in-chans 3']),
    (['--mean', '0.3', '0.3', '0.3'], ['--mean gives 3 values for 1-channel images (--in-chans / --input-size): '
                                       'give 1']),
    (['--model', 'test_vit', '--input-size', '1', '28', '28'], ['test_vit cannot take the training images, [1, 28, 28] '
                                                                'after the transform']),
])
def test_input_against_the_images(fmnist, capsys, flags, words):
    train_error(capsys, TINY + ['--data-dir', fmnist, '--dry-run', *flags], *words)


@pytest.mark.parametrize('flags, message', [
    (['--mixup', '-1'], '--mixup must be a finite number >= 0 (the Beta(alpha, alpha) of Mixup; 0 is off); got -1.0'),
    (['--mixup', 'nan'], '--mixup must be a finite number >= 0'),
    (['--cutmix', 'inf'], '--cutmix must be a finite number >= 0'),
    (['--mixup-prob', '1.5'], '--mixup-prob must be in [0, 1]; got 1.5'),
    (['--mixup-switch-prob', '-0.5'], '--mixup-switch-prob must be in [0, 1]; got -0.5'),
    (['--cutmix-minmax', '0.8', '0.2'], '--cutmix-minmax takes two numbers MIN MAX with 0 <= MIN < MAX <= 1'),
    (['--cutmix-minmax', '0.2'], '--cutmix-minmax takes two numbers'),
    (['--smoothing', '1'], '--smoothing must be in [0, 1); got 1.0'),
    (['--regmixup', '--regmixup-weight', 'inf'], '--regmixup-weight must be a finite number; got inf'),
    (['--regmixup', '--regmixup-weight', '-1'], '--regmixup-weight must be >= 0; got -1.0'),
    (['--remix', '--remix-kappa', '0.5'], '--remix-kappa must be >= 1; got 0.5'),
    (['--remix', '--remix-tau', 'nan'], '--remix-tau must be a finite number; got nan'),
    (['--logit-adjust', 'inf'], '--logit-adjust must be a finite number >= 0 (0 is off); got inf'),
    (['--mixup-off-epoch', '-1'], '--mixup-off-epoch must be >= 0'),
    (['--num-classes', '0'], '--num-classes must be >= 1; got 0'),
    (['-b', '0'], '--batch-size must be >= 1; got 0'),
], ids=lambda v: ' '.join(v) if isinstance(v, list) else None)
def test_bad_mixing_and_shape_flags_are_named(capsys, flags, message):
    """Named by their own flag, before '--icm needs mixing' (TINY has --mixup 0.2 --icm; flags come later)."""
    train_error(capsys, TINY + flags, message)


def test_negative_mixup_through_the_launcher(capsys):
    one_line_error(capsys, lambda: launch.main([STANDIN, '--mixup', '-1', '--icm']), '--mixup must be a finite number',
                   prefix='python -m timm_icm.launch: error: ')
    one_line_error(capsys, lambda: launch.main([STANDIN, '--mixup', '0.2', '--mixup-prob', '2', '--icm']),
                   '--mixup-prob must be in [0, 1]', prefix='python -m timm_icm.launch: error: ')


# ----------------------------------------------------------------------------- the launcher's files

@pytest.mark.parametrize('case, words', [
    ('missing', ['does not exist']),
    ('directory', ['is a directory, not a file']),
    ('empty', ['is empty (0 bytes)']),
    ('truncated', ['is truncated or not valid Python (line']),
])
def test_broken_training_script(tmp_path, capsys, case, words):
    script = tmp_path / 'train.py'
    if case == 'directory':
        script.mkdir()
    elif case == 'empty':
        script.write_bytes(b'')
    elif case == 'truncated':
        source = open(STANDIN, 'rb').read()
        script.write_bytes(source[:source.index(b"parser.add_argument('--data-dir'") + 25])  # a call cut off
    one_line_error(capsys, lambda: launch.main([str(script), '--mixup', '0.2', '--icm']), f'training script {script}: ',
                   *words, prefix='python -m timm_icm.launch: error: ')


@pytest.fixture
def root_log_handlers():
    """The stand-in script sets up timm's logging on the stream capsys gives it: take its handlers away after."""
    import logging
    saved = logging.root.handlers[:]
    yield
    logging.root.handlers[:] = saved


def test_broken_data_through_the_launcher(fmnist, tmp_path, capsys, root_log_handlers):
    root = fmnist_copy(fmnist, tmp_path)
    labels = root / 'train-labels-idx1-ubyte.gz'
    labels.write_bytes(labels.read_bytes()[:20])
    argv = [STANDIN, '--dataset', 'torch/fashion_mnist', '--data-dir', str(root), '--mixup', '0.2', '--icm',
            '--in-chans', '1', '--mean', '0.3', '--std', '0.3', '--swallow-errors', '--summary', str(tmp_path / 's')]
    one_line_error(capsys, lambda: launch.main(argv), f'fashion_mnist labels file {labels}: is truncated',
                   prefix='python -m timm_icm.launch: error: ')


# A timm-style script that reads checkpoints as timm's train.py does, through timm's own loaders.
CHECKPOINT_SCRIPT = '''
import argparse
from timm.models import create_model, load_checkpoint, resume_checkpoint
parser = argparse.ArgumentParser()
parser.add_argument('--initial-checkpoint', default='')
parser.add_argument('--resume', default='')
args = parser.parse_args()
model = create_model('resnet20_cifar', num_classes=10, in_chans=1)
if args.initial_checkpoint:
    load_checkpoint(model, args.initial_checkpoint)
if args.resume:
    resume_checkpoint(model, args.resume)
'''


@pytest.mark.parametrize('form', ['--initial-checkpoint X', '--resume X', '--resume=X'])
def test_checkpoint_that_would_create_a_file_through_the_launcher(run_dir, tmp_path, capsys, form):
    """The launcher reads the checkpoint the script is given, safely, before the script runs: nothing of the file
    runs, and the problem is one line naming the flag, the file and the refused global."""
    script = tmp_path / 'train.py'
    script.write_text(CHECKPOINT_SCRIPT)
    evil = file_creating_checkpoint(run_dir, tmp_path / 'evil.pth.tar', tmp_path / 'created')
    argv = [str(script), *form.replace('X', str(evil)).split()]
    flag = form.split()[0].split('=')[0]
    one_line_error(capsys, lambda: launch.main(argv), f'{flag} {evil}: {REFUSED_CHECKPOINT}',
                   prefix='python -m timm_icm.launch: error: ')
    assert not (tmp_path / 'created').exists()


def test_launcher_hands_a_sound_checkpoint_to_the_script(run_dir, tmp_path):
    script = tmp_path / 'train.py'
    script.write_text(CHECKPOINT_SCRIPT + "open(args.initial_checkpoint + '.loaded', 'w').close()\n")
    checkpoint = tmp_path / 'last.pth.tar'
    shutil.copy(run_dir / 'last.pth.tar', checkpoint)
    assert launch.run(str(script), ['--initial-checkpoint', str(checkpoint)]) == 0
    assert os.path.exists(str(checkpoint) + '.loaded')


# ----------------------------------------------------------------------------- analyze

ANALYZE = 'python -m timm_icm.analyze: error: '


def analyze_argv(fmnist, tmp_path, checkpoint):
    return ['--checkpoint', str(checkpoint), '--dataset', 'torch/fashion_mnist', '--data-dir', fmnist,
            '--output', str(tmp_path / 'figure'), '--no-plot', '--no-progress']


@pytest.mark.parametrize('case, words', [
    ('empty', ['is empty (0 bytes)']),
    ('truncated', ['is truncated or not a torch checkpoint']),
])
def test_analyze_broken_checkpoint(fmnist, run_copy, tmp_path, capsys, case, words):
    broken = run_copy / 'checkpoint-7.pth.tar'
    broken.write_bytes(b'' if case == 'empty' else (run_copy / 'last.pth.tar').read_bytes()[:3000])
    one_line_error(capsys, lambda: analyze.main(analyze_argv(fmnist, tmp_path, broken)),
                   f'--checkpoint {broken}: ', *words,
                   f'analyse {run_copy / "checkpoint-1.pth.tar"} (epoch 1), the newest checkpoint in {run_copy} that '
                   f'loads', prefix=ANALYZE)


def test_analyze_checkpoint_that_would_create_a_file(fmnist, run_copy, tmp_path, capsys):
    evil = file_creating_checkpoint(run_copy, run_copy / 'checkpoint-7.pth.tar', tmp_path / 'created')
    one_line_error(capsys, lambda: analyze.main(analyze_argv(fmnist, tmp_path, evil)),
                   f'--checkpoint {evil}: {REFUSED_CHECKPOINT}',
                   f'analyse {run_copy / "checkpoint-1.pth.tar"} (epoch 1)', prefix=ANALYZE)
    assert not (tmp_path / 'created').exists()


@pytest.mark.parametrize('content, words', [
    (b'model: [resnet20\n', ['is not valid YAML']),
    (b'- a\n- b\n', ['holds a list, not the run\'s flags (a mapping)']),
    (b'', ['is empty (0 bytes)']),
])
def test_analyze_broken_args_yaml(fmnist, run_copy, tmp_path, capsys, content, words):
    (run_copy / 'args.yaml').write_bytes(content)
    one_line_error(capsys, lambda: analyze.main(analyze_argv(fmnist, tmp_path, run_copy / 'last.pth.tar')),
                   f"the run's args.yaml {run_copy / 'args.yaml'}: ", *words,
                   "repair or remove it (without it the checkpoint's own args are used)", prefix=ANALYZE)


def test_analyze_broken_data_and_output(fmnist, run_dir, tmp_path, capsys):
    root = fmnist_copy(fmnist, tmp_path)
    images = root / 't10k-images-idx3-ubyte.gz'
    images.write_bytes(b'')
    argv = analyze_argv(str(root), tmp_path, run_dir / 'last.pth.tar')
    one_line_error(capsys, lambda: analyze.main(argv), f'fashion_mnist images file {images}: is empty', prefix=ANALYZE)
    (tmp_path / 'file').write_text('x')
    argv = analyze_argv(fmnist, tmp_path, run_dir / 'last.pth.tar')
    argv[argv.index('--output') + 1] = str(tmp_path / 'file')
    one_line_error(capsys, lambda: analyze.main(argv), f'--output {tmp_path / "file"}: cannot create the folder',
                   prefix=ANALYZE)


# ----------------------------------------------------------------------------- report

def test_report_broken_args_yaml_and_summary(run_copy, capsys, unreadable):
    (run_copy / 'args.yaml').write_bytes(b'mixup: [0.2\n')
    one_line_error(capsys, lambda: report.main([str(run_copy)]), f"the run's args.yaml {run_copy / 'args.yaml'}: is "
                                                                 f"not valid YAML", prefix='timm_icm.report: error: ')
    (run_copy / 'args.yaml').unlink()
    unreadable(run_copy / 'summary.csv')
    one_line_error(capsys, lambda: report.main([str(run_copy)]), f'summary {run_copy / "summary.csv"}: cannot be read',
                   prefix='timm_icm.report: error: ')


def test_report_leaves_out_a_row_cut_short(run_copy, capsys):
    summary = run_copy / 'summary.csv'
    summary.write_bytes(summary.read_bytes() + b'2,1.5,2.3')  # a writer killed mid-row
    assert report.main([str(run_copy)]) == 0
    assert '| run | IC-Mixup | 2 |' in capsys.readouterr().out


# ----------------------------------------------------------------------------- summary.csv on resume

@pytest.mark.parametrize('tail, kept', [
    (b'', [0, 1, 2]),
    (b'3,0.5,0.4', [0, 1, 2]),          # a row cut short
    (b'1', [0, 1, 2]),                  # cut after one character: not epoch 1 again
    (b'1,2.0,2.0,10,50,0.1,0.01\r\n', [0, 1, 2]),  # an epoch written twice: kept once
])
def test_trim_summary_keeps_each_finished_epoch_once(tmp_path, tail, kept):
    path = tmp_path / 'summary.csv'
    rows = b'epoch,train_loss,eval_loss,eval_top1,eval_top5,eval_ece,lr\r\n' + b''.join(
        f'{e},1.0,1.0,10,50,0.1,0.01\r\n'.encode() for e in range(4))
    path.write_bytes(rows + tail)
    train_icm.trim_summary(str(path), start_epoch=3)
    header, got = files.read_csv(str(path), 'summary')
    assert header[0] == 'epoch' and [int(r[0]) for r in got] == kept


def test_trim_summary_of_a_header_cut_short(tmp_path):
    path = tmp_path / 'summary.csv'
    path.write_bytes(b'epoch,train_lo')
    train_icm.trim_summary(str(path), start_epoch=0)
    assert not path.exists()  # the next row writes a whole header


# ----------------------------------------------------------------------------- kill anywhere

def kill_anywhere(root, data_dir, epochs=2, only=None):
    """Train ``epochs`` epochs, killed (SIGKILL) at every step of every file write; resume each; report as JSON.

    The steps, counted in a forked child: every ``os.replace`` / ``os.link`` / ``os.unlink`` / ``os.remove`` /
    ``tempfile.mkstemp`` in the run folder, and every file written there (``torch.save``, ``write_atomic``)
    when created (0 bytes) and when half written. For step k a forked child runs the
    training and kills itself at that step; then this process resumes as a user would: ``--resume last.pth.tar``,
    or, when that answers with exit code 2, the checkpoint its message names, or a new start where it says
    none loads.
    """
    import tempfile

    torch.set_num_threads(1)
    real = dict(replace=os.replace, link=os.link, unlink=os.unlink, remove=os.remove, mkstemp=tempfile.mkstemp,
                fdopen=os.fdopen, save=torch.save, open=builtins.open)

    def argv(name, *flags):
        # A ResNet of 3 blocks on 8x8 crops: a step, a checkpoint and its loading cost next to nothing.
        return TINY + ['--data-dir', data_dir, '--output', root, '--experiment', name, '--epochs', str(epochs),
                       '--input-size', '1', '8', '8', '--model-kwargs', 'layers=(1,1,1)', 'channels=(4,8,8)',
                       'stem_width=4', *flags]

    def child(name, kill_at, log_path):
        folder = os.path.realpath(os.path.join(root, name))
        steps = []

        def inside(path):
            return os.path.realpath(os.fspath(path)).startswith(folder + os.sep)

        def label(path):
            base = os.path.basename(os.fspath(path))
            if base.startswith('.link.') and base.endswith('.tmp'):  # RunCheckpointSaver's link before its rename
                return f'{base[6:-4]} (temporary link)'
            match = re.match(r'^\.(.+?)\.[A-Za-z0-9_]+\.tmp$', base)  # write_atomic's temporary file
            return f'{match.group(1)} (temporary)' if match else base

        def step(what):  # a kill point: the process dies here, before the operation named
            steps.append(what)
            if len(steps) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        def write_in_steps(f, data, name):
            n = len(data)
            done = 0
            for cut in [n // 2] if n > 1 else []:  # cut in the middle (0 bytes: the 'create' step before)
                f.write(data[done:cut])
                f.flush()
                done = cut
                step(f'write {name}: {cut} of {n} bytes')
            f.write(data[done:])

        class StepFile:
            def __init__(self, f, name):
                self._f, self._name = f, name

            def write(self, data):
                write_in_steps(self._f, data, self._name)
                return len(data)

            def __getattr__(self, attr):
                return getattr(self._f, attr)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

        def os_step(op):
            def wrapped(*paths, **kwargs):
                if any(inside(p) for p in paths[:2] if isinstance(p, (str, bytes, os.PathLike))):
                    step(f'{op} ' + ' -> '.join(label(p) for p in paths[:2]))
                return real[op](*paths, **kwargs)
            return wrapped

        def mkstemp(*args, **kwargs):
            fd, path = real['mkstemp'](*args, **kwargs)
            if inside(path):
                fds[fd] = label(path)
                step(f'create {label(path)}')
            return fd, path

        fds = {}

        def fdopen(fd, *args, **kwargs):
            f = real['fdopen'](fd, *args, **kwargs)
            return StepFile(f, fds[fd]) if fd in fds else f

        def save(obj, f, *args, **kwargs):
            if not isinstance(f, (str, os.PathLike)) or not inside(f):
                return real['save'](obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real['save'](obj, buffer, *args, **kwargs)
            with real['open'](f, 'wb') as out:
                step(f'create {label(f)}')
                write_in_steps(out, buffer.getvalue(), label(f))

        def open_(file, mode='r', *args, **kwargs):
            f = real['open'](file, mode, *args, **kwargs)
            if any(m in mode for m in 'wax') and isinstance(file, (str, os.PathLike)) and inside(file):
                return StepFile(f, label(file))
            return f

        os.replace, os.link, os.unlink, os.remove = (os_step(op) for op in ('replace', 'link', 'unlink', 'remove'))
        tempfile.mkstemp, os.fdopen, torch.save, builtins.open = mkstemp, fdopen, save, open_
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                code = train_icm.main(argv(name))
        finally:
            with real['open'](log_path, 'w') as f:
                json.dump(steps, f)
        os._exit(code)

    def in_child(name, kill_at):
        log_path = os.path.join(root, f'{name}.steps.json')
        pid = os.fork()
        if pid == 0:
            try:
                child(name, kill_at, log_path)
            finally:
                os._exit(70)
        _, status = os.waitpid(pid, 0)
        if kill_at:
            return status
        with open(log_path) as f:
            return status, json.load(f)

    def main_quietly(args):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = train_icm.main(args)
        return code, out.getvalue(), err.getvalue()

    def newest_complete(folder):
        """The highest epoch of a checkpoint in ``folder`` that loads (``tmp.pth.tar`` is not one)."""
        epochs_ = {}
        for name in os.listdir(folder):
            if name.endswith('.pth.tar') and name != 'tmp.pth.tar':
                inode = os.stat(os.path.join(folder, name)).st_ino  # last / checkpoint-N / best: hard links
                if inode not in epochs_:
                    try:
                        epochs_[inode] = files.load_checkpoint(os.path.join(folder, name))['epoch']
                    except files.FileProblem:
                        epochs_[inode] = None
        return max((e for e in epochs_.values() if e is not None), default=None)

    status, steps = in_child('count', kill_at=0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    results = []
    for k in (only or range(1, len(steps) + 1)):
        name = f'kill{k}'
        status = in_child(name, kill_at=k)
        folder = os.path.join(root, name)
        complete = newest_complete(folder)
        route, loaded = 'last', None
        code, out, err = main_quietly(argv(name, '--resume', os.path.join(folder, 'last.pth.tar')))
        if code == 2:
            way_out = re.search(r'resume from (\S+) \(epoch', err)
            if way_out:
                route = os.path.basename(way_out.group(1))
                code, out, err = main_quietly(argv(name, '--resume', way_out.group(1)))
            elif 'start the run again without --resume' in err:
                route = 'new start'
                code, out, err = main_quietly(argv(name))
        found = re.search(r"Loaded checkpoint '.*' \(epoch (\d+)\)", out)
        loaded = int(found.group(1)) if found else None
        summary = os.path.join(folder, 'summary.csv')
        header, rows = files.read_csv(summary, 'summary') if os.path.exists(summary) else ([], [])
        results.append(dict(
            k=k, step=steps[k - 1], killed=os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
            complete=complete, route=route, loaded=loaded, code=code, error=err.strip()[-300:],
            epochs=[int(r[0]) for r in rows], lines=open(summary, 'rb').read().count(b'\n') if rows else 0,
            last_epoch=files.load_checkpoint(os.path.join(folder, 'last.pth.tar'))['epoch'],
            leftovers=sorted(f for f in os.listdir(folder) if f.endswith('.tmp') or f == 'tmp.pth.tar')))
        shutil.rmtree(folder)
    return dict(steps=steps, results=results)


def test_kill_anywhere_while_writing_then_resume(tmp_path):
    """SIGKILL at every step of every checkpoint / summary / args write of a 2-epoch run, then resume:
    the run resumes from the newest complete checkpoint and summary.csv holds each epoch once."""
    fmnist = str(tmp_path / 'data')
    write_fmnist(fmnist, np.random.default_rng(0), n_train=8, n_test=4)  # one batch of 8 an epoch
    code = ('import json, sys; import test_broken_files as t; '
            'print(json.dumps(t.kill_anywhere(sys.argv[1], sys.argv[2])))')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]))
    proc = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'runs'), fmnist], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report_ = json.loads(proc.stdout.strip().splitlines()[-1])
    steps, results = report_['steps'], report_['results']
    written = ' '.join(steps)
    for what in ('args.yaml', 'class_counts.json', 'summary.csv', 'tmp.pth.tar', 'replace tmp.pth.tar -> last.pth.tar',
                 'checkpoint-0.pth.tar', 'checkpoint-1.pth.tar', 'model_best.pth.tar'):
        assert what in written, (what, steps)
    assert len(results) == len(steps) >= 20
    for r in results:
        assert r['killed'], r
        assert r['code'] == 0, r
        assert r['epochs'] == [0, 1] and r['lines'] == 3, r  # header + each epoch once, no row cut short
        assert r['last_epoch'] == 1 and r['leftovers'] == [], r
        if r['complete'] is None:
            assert r['route'] == 'new start', r
        else:  # resumed from the newest complete checkpoint
            assert r['route'] in ('last', f'checkpoint-{r["complete"]}.pth.tar') and r['loaded'] == r['complete'], r
    assert {r['route'] for r in results} >= {'last', 'new start'}
