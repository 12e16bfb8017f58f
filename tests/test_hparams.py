"""Every YAML under hparams/ loads and builds, and the composed configs carry the paper's recipe.

The builds run ``train_icm.main([... '--dry-run'])`` in this process (one torch import for all).
Method files are combined with the Fashion-MNIST CPU base so they build completely; the paper
bases need CIFAR/ciFAIR, which is not here: they must stop with exit code 2 and one stderr line
that names the data set and the folder.
"""
import contextlib
import io
import re
import sys
from pathlib import Path

import pytest
import torch
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # train_icm.py lives at the repository root
    sys.path.insert(0, str(ROOT))

import train_icm  # noqa: E402
from timm_icm import cli  # noqa: E402

HPARAMS = ROOT / 'hparams'
PAPER = sorted((HPARAMS / 'paper').glob('*.yaml'))
METHODS = sorted((HPARAMS / 'methods').glob('*.yaml'))
CPU_BASE = HPARAMS / 'cpu' / 'fmnist_resnet20.yaml'
CPU_CIFAR_BASES = sorted((HPARAMS / 'cpu').glob('cifar*_resnet20.yaml'))  # real data: tests/test_cifar_real.py
CPU_SETTINGS = sorted(p for p in (HPARAMS / 'cpu').glob('*.yaml') if p != CPU_BASE and p not in CPU_CIFAR_BASES)
LONG_SCHEDULE = HPARAMS / 'long' / 'schedule.yaml'

METHOD_NAMES = {'erm', 'mixup', 'icmixup', 'icmixup_class', 'icmixup_pair',
                'regmixup', 'icregmixup', 'remix', 'icremix', 'la', 'mixup_la', 'icmixup_la'}
PAPER_DATA = {  # base file -> (dataset, classes, train split, model)
    'cifar10_resnet34': ('torch/cifar10', 10, 'train', 'resnet34_cifar'),
    'cifar100_resnet34': ('torch/cifar100', 100, 'train', 'resnet34_cifar'),
    'deic_cifair10_resnet34': ('deic_cifair10', 10, 'trainval', 'resnet34_cifar'),
    'deic_cifair100_resnet34': ('deic_cifair100', 100, 'trainval', 'resnet34_cifar'),
    'deic_cifair10_wrn16_8': ('deic_cifair10', 10, 'trainval', 'wrn16_8_cifar'),
}
CIFAR10_MEAN, CIFAR100_MEAN = [0.4914, 0.4822, 0.4465], [0.5071, 0.4865, 0.4409]


def _id(path: Path) -> str:
    return path.stem


def parse(*files, flags=()):
    argv = [a for f in files for a in ('-c', str(f))] + list(flags)
    args, _ = cli.parse_args(argv)
    return args


def run_main(argv):
    """train_icm.main in this process: (exit code, stdout, stderr); argparse's SystemExit counts too."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = train_icm.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- inventory

def test_every_yaml_is_covered():
    """No YAML escapes the build tests below (a new folder needs a test)."""
    every = set(HPARAMS.rglob('*.yaml')) | set(HPARAMS.rglob('*.yml'))
    covered = set(PAPER) | set(METHODS) | {CPU_BASE} | set(CPU_SETTINGS) | set(CPU_CIFAR_BASES) | {LONG_SCHEDULE}
    assert every == covered
    assert {p.stem for p in CPU_CIFAR_BASES} == {'cifar10_resnet20', 'cifar100_resnet20'}
    assert {p.stem for p in METHODS} == METHOD_NAMES
    assert {p.stem for p in PAPER} == set(PAPER_DATA)
    assert CPU_BASE.is_file() and CPU_SETTINGS


def test_readme_names_existing_files():
    text = (HPARAMS / 'README.md').read_text()
    named = set(re.findall(r'hparams/[\w/.{}$-]+?\.yaml', text))
    concrete = {n for n in named if '$' not in n and '{' not in n}
    missing = [n for n in concrete if not (ROOT / n).is_file()]
    assert not missing, f'hparams/README.md names missing files: {missing}'
    # the loops ${D}_resnet34.yaml and $M.yaml expand to files that exist
    for d in ('cifar10', 'cifar100', 'deic_cifair10', 'deic_cifair100'):
        assert (HPARAMS / 'paper' / f'{d}_resnet34.yaml').is_file()


# ----------------------------------------------------------------------------- builds (dry runs)

@pytest.mark.parametrize('base', PAPER + CPU_CIFAR_BASES, ids=_id)
def test_paper_base_without_data_fails_in_one_line(base, tmp_path):
    """A folder without CIFAR/ciFAIR: exit 2, one stderr line naming the data set and folder."""
    dataset = PAPER_DATA[base.stem][0] if base in PAPER else f'torch/{base.stem.split("_")[0]}'
    for data_dir in (tmp_path, tmp_path / 'absent'):  # an empty folder, a folder that does not exist
        code, _, err = run_main(['-c', base, '--data-dir', data_dir, '--dry-run'])
        lines = err.strip().splitlines()
        assert code == 2, err
        assert len(lines) == 1, err
        assert dataset in lines[0] and str(data_dir) in lines[0], lines[0]


@pytest.mark.parametrize('method', METHODS, ids=_id)
def test_method_builds_on_the_cpu_base(method, fashion_mnist_dir):
    code, out, err = run_main(['-c', CPU_BASE, '-c', method, '--data-dir', fashion_mnist_dir, '--dry-run'])
    assert code == 0, err
    assert 'Loss:' in out


@pytest.mark.parametrize('setting', CPU_SETTINGS, ids=_id)
def test_cpu_setting_builds(setting, fashion_mnist_dir):
    code, out, err = run_main(['-c', CPU_BASE, '-c', setting, '-c', HPARAMS / 'methods' / 'icremix.yaml',
                               '--data-dir', fashion_mnist_dir, '--dry-run'])
    assert code == 0, err
    assert 'Training on' in out


def test_cpu_base_builds_alone(fashion_mnist_dir):
    code, _, err = run_main(['-c', CPU_BASE, '--data-dir', fashion_mnist_dir, '--dry-run'])
    assert code == 0, err


# ----------------------------------------------------------------------------- the recipe

@pytest.mark.parametrize('base', PAPER, ids=_id)
@pytest.mark.parametrize('method', METHODS, ids=_id)
def test_every_paper_experiment_parses(base, method):
    args = parse(base, method)
    assert cli.check_icm_args(args) is None


@pytest.mark.parametrize('base', [p for p in PAPER if 'resnet34' in p.stem], ids=_id)
def test_paper_base_is_the_paper_recipe(base):
    args = parse(base)
    dataset, classes, train_split, model = PAPER_DATA[base.stem]
    assert (args.dataset, args.num_classes, args.train_split, args.val_split) == (
        dataset, classes, train_split, 'test')
    assert args.model == model
    assert args.input_size == [3, 32, 32] and len(args.mean) == len(args.std) == 3
    assert args.mean == (CIFAR100_MEAN if classes == 100 else CIFAR10_MEAN)
    assert (args.opt, args.lr, args.momentum, args.weight_decay, args.batch_size) == ('sgd', 0.1, 0.9, 5e-4, 128)
    assert args.opt_kwargs == {'filter_bias_and_bn': False}
    assert (args.sched, args.epochs, args.decay_milestones, args.decay_rate) == ('multistep', 200, [51, 101, 151], 0.2)
    assert args.warmup_epochs == 0 and args.cooldown_epochs == 0 and not args.sched_on_updates
    assert args.smoothing == 0.0 and args.cifar_aug and args.mixup_mode == 'batch' and args.mixup_prob == 1.0
    assert args.mixup == 0 and not args.icm  # the base alone is ERM
    assert args.val_interval == 1  # summary.csv gets eval_top1 on every row


def test_paper_schedule_and_weight_decay():
    """lr 0.1, x0.2 after epochs 50/100/150 as timm builds it; decay on every parameter."""
    args = parse(HPARAMS / 'paper' / 'cifar100_resnet34.yaml', HPARAMS / 'methods' / 'icmixup.yaml',
                 flags=['-b', '512'])
    assert args.lr == 0.1  # explicit: timm does not rescale it for batch 512
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    assert [g['weight_decay'] for g in optimizer.param_groups] == [5e-4]
    assert sum(len(g['params']) for g in optimizer.param_groups) == 4
    scheduler, epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=98)
    assert epochs == 200
    lrs = {}
    for epoch in (0, 49, 50, 99, 100, 149, 150, 199):
        scheduler.step(epoch)
        lrs[epoch] = optimizer.param_groups[0]['lr']
    expected = {0: .1, 49: .1, 50: .02, 99: .02, 100: .004, 149: .004, 150: .0008, 199: .0008}
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100'])
def test_long_recipe_is_the_paper_recipe_with_resnet20(dataset):
    """hparams/long/schedule.yaml on a CPU CIFAR base: every setting of the paper's base but the model (and the
    evaluation interval and torch.compile, which leave the training the same)."""
    long = vars(parse(HPARAMS / 'cpu' / f'{dataset}_resnet20.yaml', LONG_SCHEDULE, HPARAMS / 'methods' / 'icmixup.yaml'))
    paper = vars(parse(HPARAMS / 'paper' / f'{dataset}_resnet34.yaml', HPARAMS / 'methods' / 'icmixup.yaml'))
    differ = {k for k in paper if long[k] != paper[k]}
    assert differ == {'model', 'val_interval', 'torchcompile', 'data_dir', 'workers', 'pin_mem',
                      'validation_batch_size', 'log_interval', 'config'}
    assert (long['model'], long['val_interval'], long['torchcompile']) == ('resnet20_cifar', 10, 'inductor')


def test_deic_wrn_protocol():
    args = parse(HPARAMS / 'paper' / 'deic_cifair10_wrn16_8.yaml', HPARAMS / 'methods' / 'icregmixup.yaml')
    assert (args.model, args.dataset, args.train_split, args.val_split) == (
        'wrn16_8_cifar', 'deic_cifair10', 'trainval', 'test')
    assert (args.sched, args.sched_on_updates, args.epochs, args.warmup_epochs, args.min_lr) == (
        'cosine', True, 500, 0, 0.0)
    assert (args.lr, args.weight_decay, args.batch_size) == (4.55e-3, 5.29e-3, 10)
    assert args.smoothing == 0.0 and args.opt_kwargs == {'filter_bias_and_bn': False}
    assert (args.mixup, args.regmixup, args.regmixup_weight, args.icm, args.icm_axes) == (20.0, True, 1.0, True, 'both')
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    scheduler, epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=50)
    assert epochs == 500
    scheduler.step_update(num_updates=12500)  # half way: cosine at its midpoint
    assert optimizer.param_groups[0]['lr'] == pytest.approx(args.lr / 2, rel=1e-3)


METHOD_KEYS = {  # mixup alpha, icm, axes, regmixup, remix, logit adjustment tau
    'erm': (0.0, False, 'both', False, False, 0.0),
    'mixup': (0.2, False, 'both', False, False, 0.0),
    'icmixup': (0.2, True, 'both', False, False, 0.0),
    'icmixup_class': (0.2, True, 'class', False, False, 0.0),
    'icmixup_pair': (0.2, True, 'pair', False, False, 0.0),
    'regmixup': (20.0, False, 'both', True, False, 0.0),
    'icregmixup': (20.0, True, 'both', True, False, 0.0),
    'remix': (0.2, False, 'both', False, True, 0.0),
    'icremix': (0.2, True, 'both', False, True, 0.0),
    'la': (0.0, False, 'both', False, False, 1.0),
    'mixup_la': (0.2, False, 'both', False, False, 1.0),
    'icmixup_la': (0.2, True, 'both', False, False, 1.0),
}


@pytest.mark.parametrize('method', METHODS, ids=_id)
def test_method_file_sets_the_method(method):
    """Composed after a base and after any other method file, the file alone decides the method."""
    base = HPARAMS / 'paper' / 'cifar100_resnet34.yaml'
    for before in ([], [HPARAMS / 'methods' / 'icremix.yaml'], [HPARAMS / 'methods' / 'regmixup.yaml'],
                   [HPARAMS / 'methods' / 'icmixup_la.yaml']):
        args = parse(base, *before, method)
        assert (args.mixup, args.icm, args.icm_axes, args.regmixup, args.remix, args.logit_adjust) \
            == METHOD_KEYS[method.stem]
        assert args.cutmix == 0.0 and args.smoothing == 0.0 and args.lr == 0.1  # the base is untouched
        if args.regmixup:
            assert args.regmixup_weight == 1.0
        if args.remix:
            assert (args.remix_kappa, args.remix_tau) == (3.0, 0.5)


def test_command_line_overrides_the_files():
    args = parse(HPARAMS / 'paper' / 'cifar100_resnet34.yaml', HPARAMS / 'methods' / 'icmixup.yaml',
                 flags=['-b', '64', '--train-fraction', '0.1', '--imbalance-ratio', '0.01', '--seed', '2'])
    assert (args.batch_size, args.train_fraction, args.imbalance_ratio, args.seed) == (64, 0.1, 0.01, 2)


# ----------------------------------------------------------------------------- CPU settings

def test_cpu_base():
    args = parse(CPU_BASE)
    assert (args.dataset, args.model, args.num_classes) == ('torch/fashion_mnist', 'resnet20_cifar', 10)
    assert (args.in_chans, args.input_size) == (1, [1, 28, 28])
    assert args.mean == [0.2860] and args.std == [0.3530]
    assert args.opt == 'sgd' and args.lr and args.warmup_epochs == 0 and args.smoothing == 0.0
    assert args.workers in (0, 1) and args.mixup_mode == 'batch' and args.val_split == 'test'
    assert args.eval_samples_per_class and args.epochs <= 30
    assert args.val_interval == 1  # summary.csv gets eval_top1 on every row


CPU_SETTING_DATA = {  # setting -> (fraction, samples per class, imbalance ratio)
    'spc10': (None, 10, None),
    'spc50': (None, 50, None),
    'lt': (None, 200, 0.01),
    'fraction': (0.02, None, None),
}


@pytest.mark.parametrize('setting', CPU_SETTINGS, ids=_id)
def test_cpu_setting_data(setting):
    args = parse(CPU_BASE, setting, HPARAMS / 'methods' / 'mixup.yaml')
    assert (args.train_fraction, args.train_samples_per_class, args.imbalance_ratio) == CPU_SETTING_DATA[setting.stem]
    assert args.mixup == 0.2 and args.dataset == 'torch/fashion_mnist'


@pytest.mark.parametrize('setting', CPU_SETTINGS, ids=_id)
@pytest.mark.parametrize('method', METHODS, ids=_id)
def test_every_cpu_experiment_parses(setting, method):
    args = parse(CPU_BASE, setting, method)
    assert cli.check_icm_args(args) is None
