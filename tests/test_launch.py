"""timm_icm.launch: an unmodified timm-style train.py trained with ICM.

End to end through ``python -m timm_icm.launch`` (and torchrun) on tests/upstream_standin/train.py,
a stand-in for timm's train.py in its import style, a few real steps on a tiny image folder; the
library calls (patch_timm, run, parse_icm_args) in-process.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import timm.data
import timm.loss
from timm_icm import FastCollateInfiniteClassMixup, InfiniteClassCrossEntropy, InfiniteClassMixup
from timm_icm import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(REPO, 'tests', 'upstream_standin', 'train.py')
COUNTS = [12, 8, 8, 4]  # imbalanced, so that Remix (kappa 3) has pairs to act on


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """A tiny ImageFolder (timm's folder reader): 4 classes, 16x16 RGB PNGs, COUNTS images each."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for c, n in enumerate(COUNTS):
        folder = root / 'train' / f'class{c}'
        folder.mkdir(parents=True)
        for i in range(n):
            pixels = (rng.integers(0, 60, (16, 16, 3)) + 60 * c).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f'{i}.png')
    return str(root)


@pytest.fixture(autouse=True)
def root_log_handlers():
    """The stand-in script, run in this process, sets up timm's logging on the stream of the moment (capsys's,
    closed after the test): take its handlers away, or later tests log into a closed file."""
    import logging
    saved = logging.root.handlers[:]
    yield
    logging.root.handlers[:] = saved


def standin_argv(folder, summary, *flags):
    return ['--data-dir', folder, '--num-classes', str(len(COUNTS)), '--summary', str(summary), *flags]


def launch_subprocess(folder, summary, *flags, torchrun=False):
    prefix = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'] \
        if torchrun else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    proc = subprocess.run(
        prefix + ['-m', 'timm_icm.launch', STANDIN, *standin_argv(folder, summary, *flags)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    result = json.loads(summary.read_text()) if summary.exists() else None
    return proc, result


def log_lines(proc, prefix):
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(prefix)]


# ----------------------------------------------------------------------------- end to end

def test_prefetcher_workers_remix_and_mixup_off_epoch(image_folder, tmp_path):
    """Collate mixer in a worker process, Remix counts from the training folder, mixing off at epoch 1."""
    proc, s = launch_subprocess(image_folder, tmp_path / 's.json',
                                '--mixup', '0.2', '--icm', '--remix', '-j', '1', '--mixup-off-epoch', '1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert s['loss_class'] == 'InfiniteClassCrossEntropy'
    assert 'FastCollateInfiniteClassMixup' in s['mixer_mro']
    assert s['mixer_remix'] is True and s['class_counts'] == COUNTS
    first, second = s['epochs']
    assert max(first['mixed_fraction']) > 0
    # timm's persistent workers would keep mixing: the launcher starts them per epoch instead.
    assert second['mixed_fraction'] == [0.0, 0.0]
    assert np.isfinite(s['final_loss'])
    assert len(log_lines(proc, 'ICM launch: mixer FastCollateInfiniteClassMixup')) == 1
    assert len(log_lines(proc, 'ICM launch: loss InfiniteClassCrossEntropy')) == 1


def test_tensor_path_regmixup_through_classification_task(image_folder, tmp_path):
    proc, s = launch_subprocess(image_folder, tmp_path / 's.json', '--mixup', '2', '--icm', '--regmixup',
                                '--no-prefetcher', '--task', '--mixup-off-epoch', '1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert s['loss_class'] == 'RegMixupLoss' and 'InfiniteClassCrossEntropy' in s['loss_repr']
    assert 'InfiniteClassMixup' in s['mixer_mro'] and s['mixer_regmixup'] is True
    assert s['epochs'][0]['target_shape'] == [2, 8, 4]  # [clean; mixed]
    assert s['epochs'][1]['target_shape'] == [8, 4]  # mixing off: the clean batch alone
    assert len(log_lines(proc, 'ICM launch: mixer InfiniteClassMixup')) == 1
    assert len(log_lines(proc, 'ICM launch: loss RegMixupLoss')) == 1


def test_icm_without_mixing_is_a_one_line_error(image_folder, tmp_path, capsys):
    summary = tmp_path / 's.json'
    assert launch.main([STANDIN, *standin_argv(image_folder, summary, '--icm', '--smoothing', '0.1')]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        'python -m timm_icm.launch: error: --icm needs mixing: set --mixup ALPHA and/or --cutmix ALPHA '
        '(the paper uses --mixup 0.2)']
    assert not summary.exists()


def test_script_with_its_own_loss_stops_and_cannot_swallow_it(image_folder, tmp_path):
    """The collate mixer runs in a worker; the check runs in the main process, past `except Exception`."""
    proc, s = launch_subprocess(image_folder, tmp_path / 's.json', '--mixup', '0.2', '--icm',
                                '--standin-loss', 'own', '-j', '1', '--swallow-errors')
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('python -m timm_icm.launch: error: --icm: the script reached its first training batch '
                           'without creating timm.loss.SoftTargetCrossEntropy')
    assert 'Traceback' not in proc.stderr and 'worker' not in proc.stderr and 'carrying on' not in proc.stderr
    assert s is None


def test_torchrun_two_processes_gathered_loss(image_folder, tmp_path):
    proc, s = launch_subprocess(image_folder, tmp_path / 's.json', '--mixup', '0.2', '--icm', '--icm-gather',
                                '-b', '4', torchrun=True)
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]
    assert s['world_size'] == 2 and 'gather_distributed=True' in s['loss_repr']
    assert np.isfinite(s['final_loss'])
    assert len(log_lines(proc, 'ICM launch: loss')) == 1  # rank 0 only


# ----------------------------------------------------------------------------- in-process: run()

def test_run_without_icm_gives_the_plain_baselines(image_folder, tmp_path):
    summary = tmp_path / 's.json'
    code = launch.run(STANDIN, standin_argv(image_folder, summary, '--mixup', '2', '--regmixup', '--remix',
                                            '--no-prefetcher'))
    assert code == 0
    s = json.loads(summary.read_text())
    assert s['loss_class'] == 'RegMixupLoss' and 'SoftTargetCrossEntropy' in s['loss_repr']
    assert 'InfiniteClassCrossEntropy' not in s['loss_repr']
    assert s['mixer_remix'] is True and s['class_counts'] == COUNTS
    assert timm.data.Mixup is timm.data.mixup.Mixup  # restored


def test_run_task_with_another_criterion_stops_at_the_task(image_folder, tmp_path):
    with pytest.raises(launch.LaunchError, match='the script trains with own_soft_target_loss, not the --icm loss'):
        launch.run(STANDIN, standin_argv(image_folder, tmp_path / 's.json', '--mixup', '0.2', '--icm', '--task',
                                         '--standin-loss', 'own', '--no-prefetcher'))


def test_run_loss_created_but_not_used_stops_at_the_second_batch(image_folder, tmp_path):
    with pytest.raises(launch.LaunchError, match='loss was not called for the first training batch'):
        launch.run(STANDIN, standin_argv(image_folder, tmp_path / 's.json', '--mixup', '0.2', '--icm',
                                         '--standin-loss', 'unused', '--swallow-errors'))


def test_run_missing_script():
    with pytest.raises(launch.LaunchError, match='training script /nonexistent/train.py: does not exist'):
        launch.run('/nonexistent/train.py', ['--mixup', '0.2', '--icm'])


def test_main_help_and_usage(capsys):
    assert launch.main(['--help']) == 0
    out = capsys.readouterr().out
    for flag in ('--icm', '--icm-axes', '--icm-unmixed', '--icm-gather', '--regmixup-weight', '--remix-tau'):
        assert flag in out
    assert launch.main([]) == 2 and launch.main(['--icm', '--mixup', '0.2']) == 2
    assert capsys.readouterr().err.count('usage: python -m timm_icm.launch SCRIPT') == 2


def test_logit_adjust_with_mixing_wraps_the_icm_loss(image_folder, tmp_path):
    summary = tmp_path / 's.json'
    assert launch.run(STANDIN, standin_argv(image_folder, summary, '--mixup', '0.2', '--icm', '--logit-adjust', '1',
                                            '--no-prefetcher')) == 0
    s = json.loads(summary.read_text())
    assert s['loss_class'] == 'LogitAdjustedLoss' and 'InfiniteClassCrossEntropy' in s['loss_repr']
    assert 'tau=1, classes=4' in s['loss_repr'] and np.isfinite(s['final_loss'])


def test_logit_adjust_without_mixing_wraps_the_task_criterion(image_folder, tmp_path, capsys):
    """Mixing off: timm's newest train.py hands its (label-smoothed) CE to ClassificationTask, which gets LA."""
    args = standin_argv(image_folder, tmp_path / 's.json', '--logit-adjust', '0.5', '--task', '--no-prefetcher')
    assert launch.run(STANDIN, args) == 0
    output = ' '.join(''.join(capsys.readouterr()).split())
    assert ("ICM launch: loss LogitAdjustedLoss( tau=0.5, classes=4 (loss): LabelSmoothingCrossEntropy() ) "
            "(the training task's criterion)") in output
    assert 'ClassificationTask: criterion=LogitAdjustedLoss' in output


def test_main_destroys_the_process_group_a_failed_script_leaves(monkeypatch, capsys):
    def run(script, argv):  # a script that set up torch.distributed, then stopped on an ICM error
        torch.distributed.init_process_group('gloo', init_method='tcp://127.0.0.1:0', rank=0, world_size=1)
        raise launch.LaunchError('the script never called the loss')

    monkeypatch.setattr(launch, 'run', run)
    assert launch.main(['train.py', '--icm']) == 2
    assert not torch.distributed.is_initialized()
    assert 'error: the script never called the loss' in capsys.readouterr().err


def test_logit_adjust_with_a_loss_the_launcher_never_sees_is_an_error(image_folder, tmp_path):
    """timm's older train.py calls nn.CrossEntropyLoss directly when mixing is off: LA must not be dropped."""
    with pytest.raises(launch.LaunchError, match='--logit-adjust: the script finished without calling the '
                                                 "launcher's loss"):
        launch.run(STANDIN, standin_argv(image_folder, tmp_path / 's.json', '--logit-adjust', '1', '--no-prefetcher'))


# ----------------------------------------------------------------------------- in-process: the library

def test_patch_timm_replaces_and_restores():
    originals = (timm.data.Mixup, timm.data.FastCollateMixup, timm.loss.SoftTargetCrossEntropy,
                 timm.data.create_dataset, timm.data.create_loader, timm.data.loader.PrefetchLoader.__iter__)
    with launch.patch_timm(icm=True, icm_axes='class', icm_unmixed='ce') as patched:
        from timm.data import FastCollateMixup, Mixup
        from timm.loss import SoftTargetCrossEntropy
        mixer = Mixup(mixup_alpha=0.2, num_classes=4)
        collate = FastCollateMixup(mixup_alpha=0.2, num_classes=4)
        loss = SoftTargetCrossEntropy()
        assert isinstance(mixer, InfiniteClassMixup) and isinstance(collate, FastCollateInfiniteClassMixup)
        assert isinstance(loss, InfiniteClassCrossEntropy) and (loss.axes, loss.unmixed) == ('class', 'ce')
        assert patched.mixers == [mixer, collate] and patched.losses == [loss]
        assert {'timm.data.Mixup', 'timm.data.FastCollateMixup', 'timm.loss.SoftTargetCrossEntropy'} \
            <= set(patched.targets)
        with pytest.raises(RuntimeError, match='already active'):
            with launch.patch_timm():
                pass
        x, target = mixer(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
        assert loss(torch.randn(4, 4), target).isfinite()
        assert patched.loss_calls == 1
    assert (timm.data.Mixup, timm.data.FastCollateMixup, timm.loss.SoftTargetCrossEntropy, timm.data.create_dataset,
            timm.data.create_loader, timm.data.loader.PrefetchLoader.__iter__) == originals


def test_patch_timm_task_criterion_check():
    from timm.task import ClassificationTask
    model = torch.nn.Linear(4, 4)
    with launch.patch_timm(icm=True):
        from timm.loss import SoftTargetCrossEntropy
        ClassificationTask(model, criterion=SoftTargetCrossEntropy(), verbose=False)  # the launcher's loss: fine
        with pytest.raises(launch.LaunchError, match='trains with LabelSmoothingCrossEntropy'):
            ClassificationTask(model, criterion=timm.loss.LabelSmoothingCrossEntropy(), verbose=False)
    ClassificationTask(model, criterion=torch.nn.CrossEntropyLoss(), verbose=False)  # not patched any more


def test_remix_needs_readable_training_labels():
    with launch.patch_timm(remix=True) as patched:
        with pytest.raises(launch.LaunchError, match='created no training data set'):
            timm.data.Mixup(mixup_alpha=0.2, num_classes=4)
        patched.train_dataset = torch.utils.data.TensorDataset(torch.zeros(4, 3))
        with pytest.raises(launch.LaunchError, match='--remix needs the class counts of the training set: '
                                                     'dataset_targets: cannot read'):
            timm.data.Mixup(mixup_alpha=0.2, num_classes=4)


def test_split_argv_keeps_order_and_values():
    icm, script = launch.split_argv(['--data-dir', 'd', '--icm', '--mixup', '0.2', '--icm-axes=class',
                                     '--remix-kappa', '4', '-b', '8', '--', '--icm'])
    assert icm == ['--icm', '--icm-axes=class', '--remix-kappa', '4']
    assert script == ['--data-dir', 'd', '--mixup', '0.2', '-b', '8', '--', '--icm']


def test_parse_icm_args_reads_the_scripts_config(tmp_path):
    config = tmp_path / 'method.yaml'
    config.write_text('mixup: 0.2\nicm: true\nicm_axes: pair\nregmixup: false\nepochs: 3\n')
    args, script = launch.parse_icm_args(['-c', str(config), '--icm-axes', 'class'])
    assert args.icm and args.icm_axes == 'class' and args.mixup == 0.2  # command line over config
    assert script == ['-c', str(config)]
    config.write_text('icm: yes please\n')
    with pytest.raises(launch.LaunchError, match="config key 'icm' expects true or false"):
        launch.parse_icm_args(['-c', str(config), '--mixup', '0.2'])


@pytest.mark.parametrize('argv, message', [
    (['--mixup', '0.2', '--icm-axes', 'class'], '--icm-axes only applies to the ICM loss: add --icm'),
    (['--mixup', '0.2', '--icm-unmixed', 'ce'], '--icm-unmixed only applies to the ICM loss: add --icm'),
    (['--mixup', '0.2', '--icm', '--icm-unmixed', 'skip'], "invalid choice: 'skip'"),
    (['--mixup', '0.2', '--icm', '--bce-loss'], '--bce-loss and --icm are two different losses'),
    (['--mixup', '0.2', '--icm-axes', 'sideways'], "invalid choice: 'sideways'"),
    (['--regmixup'], '--regmixup needs mixing'),
    (['--logit-adjust', '-0.5'], '--logit-adjust must be a finite number >= 0'),
])
def test_parse_icm_args_errors(argv, message):
    with pytest.raises(launch.LaunchError, match=message):
        launch.parse_icm_args(argv)
