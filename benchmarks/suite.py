"""The CIFAR suites as data: the settings, the methods, the blocks (setting x network x methods x seeds), the runs
they plan and the ``train_icm.py`` command line of each, the run folders' names and the CSV files the results go
to. ``benchmarks/cifar.py`` runs and reports them; ``cifar_converged.py``, ``cifar_ladder.py`` and
``cifar_classes.py`` read them. This module imports none of them: the benchmark modules import in one direction.
"""
import csv
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HPARAMS = os.path.join(ROOT, 'hparams')
PACK = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar')
# cifar.csv: one row per finished run. 'model': the network (timm name); the rows before the capacity ladder are
# all resnet20_cifar.
FIELDS = ['block', 'setting', 'model', 'method', 'seed', 'recipe', 'epochs', 'commit', 'device', 'top1', 'top5',
          'ece', 'seconds']
# cifar-classes.csv (benchmarks/cifar_classes.py): one row per class of each run
# 'confidence': the sum, over the class's test images, of the model's top softmax probability.
CLASS_FIELDS = ['setting', 'model', 'method', 'seed', 'recipe', 'class', 'train_images', 'test_images', 'correct',
                'predicted', 'confidence']
# cifar-calibration.csv (benchmarks/cifar_classes.py): one row per run; ECE (%) before and after temperature
# scaling (fitted on one half of the test set, measured on the other, halves swapped) and the temperature.
CALIBRATION_FIELDS = ['setting', 'model', 'method', 'seed', 'recipe', 'ece', 'ece_scaled', 'temperature']
# The network of every block but the capacity ladder's (hparams/cpu/*_resnet20.yaml).
DEFAULT_MODEL = 'resnet20_cifar'


class Setting(NamedTuple):
    dataset: str        # 'cifar10' or 'cifar100'
    flags: Tuple[str, ...]
    cpu_epochs: int     # the cpu recipe's schedule length for this setting
    paper: Dict[str, float]  # the paper's top-1 per method (ResNet-34, 200 epochs, mean of 3 runs)
    paper_deltas: Dict[Tuple[str, str], float] = {}  # differences the paper shows only in a figure


# The paper's numbers: Table 2 right (LT-CIFAR), Table 1 right (CIFAR-100 10 %; "No Mixup" is ERM), Figure 3
# right (IC-RegMixup - RegMixup at 10 %, as read off the figure) and Table 2 left (ciFAIR-10: CIFAR-10's 50 training
# images per class, a test set with CIFAR-10's near-duplicates of training images replaced; ours keeps CIFAR-10's).
SETTINGS = {
    'LT-CIFAR-10 0.01': Setting('cifar10', ('--imbalance-ratio', '0.01'), 10,
                                {'ERM': 71.87, 'Mixup': 72.82, 'IC-Mixup': 76.81, 'Remix': 72.65, 'IC-Remix': 79.28}),
    'CIFAR-100 10 %': Setting('cifar100', ('--train-fraction', '0.1'), 25,
                              {'ERM': 26.55, 'Mixup': 28.21, 'IC-Mixup (class)': 30.38, 'IC-Mixup (pair)': 28.29,
                               'IC-Mixup': 30.19}, {('IC-RegMixup', 'RegMixup'): 7.07}),
    'LT-CIFAR-10 0.1': Setting('cifar10', ('--imbalance-ratio', '0.1'), 10,
                               {'ERM': 88.63, 'Mixup': 89.63, 'IC-Mixup': 89.89, 'Remix': 89.57, 'IC-Remix': 90.26}),
    'LT-CIFAR-100 0.01': Setting('cifar100', ('--imbalance-ratio', '0.01'), 10,
                                 {'ERM': 37.44, 'Mixup': 39.21, 'IC-Mixup': 43.31, 'Remix': 38.04, 'IC-Remix': 46.01}),
    # 500 images; the last batch of each epoch (116 at batch 128) is trained on, as in the paper's code.
    'CIFAR-10 50 per class': Setting('cifar10', ('--train-samples-per-class', '50', '--keep-last-batch'), 10,
                                     {'ERM': 45.58, 'Mixup': 47.63, 'IC-Mixup': 49.03, 'RegMixup': 53.17,
                                      'IC-RegMixup': 55.54}),
}
# Method name -> (file under hparams/methods/, extra flags)
METHODS = {
    'ERM': ('erm.yaml', ()),
    'Mixup': ('mixup.yaml', ()),
    'IC-Mixup': ('icmixup.yaml', ()),
    'Remix': ('remix.yaml', ()),
    'IC-Remix': ('icremix.yaml', ()),
    'RegMixup': ('regmixup.yaml', ()),
    'IC-RegMixup': ('icregmixup.yaml', ()),
    'LA': ('la.yaml', ()),
    'Mixup + LA': ('mixup_la.yaml', ()),
    'IC-Mixup + LA': ('icmixup_la.yaml', ()),
    'ICM contrast, no mixing': ('icmixup.yaml', ('--mixup-prob', '0', '--icm-unmixed', 'icm')),
    'IC-Mixup (merge)': ('icmixup.yaml', ('--icm-duplicates', 'merge')),
    'IC-Mixup (merge) + LA': ('icmixup_la.yaml', ('--icm-duplicates', 'merge')),
    'IC-Mixup (class)': ('icmixup_class.yaml', ()),
    'IC-Mixup (pair)': ('icmixup_pair.yaml', ()),
}


class Block(NamedTuple):
    settings: Tuple[str, ...]
    core: Tuple[str, ...]
    extras: Tuple[str, ...]  # run after every block's core methods (--extras)
    last: bool = False       # the whole block runs after the others' extras: "as far as the budget goes"
    models: Tuple[str, ...] = (DEFAULT_MODEL,)  # the networks, in the order they run
    groups: Tuple[Tuple[str, ...], ...] = ()  # the core in groups, each over every seed before the next (else one)
    val_interval: Optional[int] = None  # evaluate every this many epochs (else the recipe's)


# The capacity ladder's networks and their parameters with 10 classes: ResNet-20, WRN-16-4 (near the geometric
# middle) and the paper's ResNet-34 (tests/test_models.py checks the counts).
LADDER_PARAMS = {'resnet20_cifar': 272_474, 'wrn16_4_cifar': 2_748_890, 'resnet34_cifar': 21_282_122}
LADDER = tuple(LADDER_PARAMS)


BLOCKS = {
    'B1': Block(('LT-CIFAR-10 0.01',),
                ('ERM', 'Mixup', 'IC-Mixup', 'Remix', 'IC-Remix', 'LA', 'IC-Mixup + LA', 'ICM contrast, no mixing'),
                ('Mixup + LA', 'IC-Mixup (merge)', 'IC-Mixup (merge) + LA')),
    'B2': Block(('CIFAR-100 10 %',), ('Mixup', 'IC-Mixup', 'RegMixup', 'IC-RegMixup'),
                ('ERM', 'IC-Mixup (class)', 'IC-Mixup (pair)')),
    'B3': Block(('LT-CIFAR-10 0.1', 'LT-CIFAR-100 0.01'), ('ERM', 'Mixup', 'IC-Mixup', 'Remix', 'IC-Remix', 'LA'), (),
                last=True),
    'L1': Block(('LT-CIFAR-10 0.01',), ('ERM', 'Mixup', 'IC-Mixup', 'LA'), ('Remix', 'IC-Remix', 'IC-Mixup + LA')),
    'L2': Block(('CIFAR-100 10 %',), ('ERM', 'Mixup', 'IC-Mixup'), ('IC-Mixup (class)', 'RegMixup', 'IC-RegMixup')),
    'L3': Block(('LT-CIFAR-100 0.01',), ('ERM', 'Mixup', 'IC-Mixup', 'LA'), (), last=True),
    # The capacity ladder (Table 2 left's rows with the long recipe on three networks): each network's Mixup pair,
    # then its RegMixup pair, then ERM. The test set every 20 epochs: a forward pass over its 10,000 images costs
    # ResNet-34 about six of its 500-image training epochs (benchmarks/results/speed-ladder.md).
    'C1': Block(('CIFAR-10 50 per class',), ('Mixup', 'IC-Mixup', 'RegMixup', 'IC-RegMixup', 'ERM'), (),
                models=LADDER, groups=(('Mixup', 'IC-Mixup'), ('RegMixup', 'IC-RegMixup'), ('ERM',)), val_interval=20),
}
RECIPES = ('cpu', 'long', 'paper')
PAIRS = [('IC-Mixup', 'Mixup'), ('IC-Remix', 'Remix'), ('IC-RegMixup', 'RegMixup'), ('Mixup', 'ERM'),
         ('IC-Mixup', 'ERM'), ('LA', 'ERM'), ('IC-Mixup', 'LA'), ('IC-Mixup + LA', 'IC-Mixup'), ('IC-Mixup + LA', 'LA'),
         ('Mixup + LA', 'Mixup'), ('IC-Mixup', 'Mixup + LA'), ('ICM contrast, no mixing', 'ERM'),
         ('ICM contrast, no mixing', 'LA'),
         ('IC-Mixup', 'ICM contrast, no mixing'), ('IC-Mixup (merge)', 'IC-Mixup'),
         ('IC-Mixup (merge) + LA', 'IC-Mixup (merge)'), ('IC-Mixup (class)', 'Mixup'), ('IC-Mixup (pair)', 'Mixup'),
         ('IC-Mixup', 'IC-Mixup (class)')]
# A run of this (block, method, seed) evaluates every epoch: the learning curve docs/cifar.md shows.
CURVE_RUN = ('B1', 'IC-Mixup', 0)
LONG_EPOCHS = 200  # hparams/long/schedule.yaml (and the paper's)
RUNS_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'timm-icm', 'cifar')


class Run(NamedTuple):
    block: str
    setting: str
    method: str
    seed: int
    epochs: Optional[int] = None  # the recipe's schedule; else this many epochs, milestones scaled with them
    model: str = DEFAULT_MODEL


# The long recipe's check that 200 epochs are enough: the same run with half of them (E against 2E).
SCHEDULE_CHECK = Run('L1', 'LT-CIFAR-10 0.01', 'IC-Mixup', 0, LONG_EPOCHS // 2)


def plan(blocks: Sequence[str], seeds: int, extras: bool, recipe: str = 'cpu') -> List[Run]:
    """Core methods first (seed-major, so each seed's pairs complete together), then the extras, then the
    blocks marked ``last``. The long recipe's schedule check follows the core methods. A block of several
    networks runs them in its order, each network's method groups one after the other, each over every seed."""
    stages = [(b, 'core') for b in blocks if not BLOCKS[b].last]
    stages += [(b, 'extras') for b in blocks if extras and not BLOCKS[b].last]
    stages += [(b, part) for b in blocks if BLOCKS[b].last for part in ('core', 'extras')[:1 + extras]]
    check = recipe == 'long' and SCHEDULE_CHECK.block in blocks
    runs = []
    for block, part in stages:
        if check and part == 'extras' and SCHEDULE_CHECK not in runs:
            runs.append(SCHEDULE_CHECK)
        spec = BLOCKS[block]
        groups = spec.groups if part == 'core' and spec.groups else (getattr(spec, part),)
        for model in spec.models:
            for group in groups:
                for seed in range(seeds):
                    for setting in spec.settings:
                        runs += [Run(block, setting, m, seed, model=model) for m in group]
    if check and SCHEDULE_CHECK not in runs:
        runs.append(SCHEDULE_CHECK)
    return runs


def train_argv(run: Run, recipe: str, data_dir: str, out: str) -> List[str]:
    setting = SETTINGS[run.setting]
    if recipe == 'paper':
        bases = [os.path.join(HPARAMS, 'paper', f'{setting.dataset}_resnet34.yaml')]
        schedule = []
    else:
        bases = [os.path.join(HPARAMS, 'cpu', f'{setting.dataset}_resnet20.yaml')]
        schedule = ['--epochs', str(setting.cpu_epochs)] if recipe == 'cpu' else []
        if recipe == 'long':
            bases.append(os.path.join(HPARAMS, 'long', 'schedule.yaml'))
    if run.epochs:  # the multistep milestones at the same fractions of the shorter schedule
        schedule = ['--epochs', str(run.epochs), '--decay-milestones',
                    *(str(run.epochs * k // 4 + 1) for k in (1, 2, 3))]
    method_file, method_flags = METHODS[run.method]
    if (run.block, run.method, run.seed) == CURVE_RUN:
        schedule += ['--val-interval', '1']
    elif BLOCKS[run.block].val_interval:
        schedule += ['--val-interval', str(BLOCKS[run.block].val_interval)]
    if run.model != DEFAULT_MODEL:
        schedule += ['--model', run.model]
    configs = [arg for path in bases + [os.path.join(HPARAMS, 'methods', method_file)] for arg in ('-c', path)]
    return [*configs, *setting.flags, *method_flags, *schedule, '--data-dir', data_dir, '--seed', str(run.seed),
            '--subset-seed', str(run.seed), '--output', out, '--experiment', run_name(run, recipe)]


def row_run(row: Dict) -> Run:
    """The run a row of cifar.csv came from."""
    return Run(row['block'], row['setting'], row['method'], row['seed'],
               row['epochs'] if is_schedule_check(row) else None, row['model'])


def run_epochs(run: Run, recipe: str) -> int:
    """How many epochs the run trains."""
    return run.epochs or (SETTINGS[run.setting].cpu_epochs if recipe == 'cpu' else LONG_EPOCHS)


def is_schedule_check(row: Dict) -> bool:
    """A row of the long recipe's half-schedule run (E against 2E), not one of its blocks' cells."""
    return row['recipe'] == 'long' and row['epochs'] != LONG_EPOCHS


def run_name(run: Run, recipe: str) -> str:
    """The run's folder (and experiment) name; the network's name only where it is not the default."""
    name = (f'{recipe}-{run.setting}-{run.method}-{run.seed}' + (f'-e{run.epochs}' if run.epochs else '')
            + (f'-{run.model}' if run.model != DEFAULT_MODEL else ''))
    return ''.join(c if c.isalnum() or c in '.-' else '_' for c in name)


def summary_rows(folder: str) -> List[Dict]:
    """A run folder's summary.csv, one dict per finished epoch (none before the first)."""
    path = os.path.join(folder, 'summary.csv')
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _read_csv(path: str, types: Dict[str, type]) -> List[Dict]:
    """The rows of a results CSV (none if it is not there yet), with the named columns converted."""
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.update({k: convert(r[k]) for k, convert in types.items()})
        r.setdefault('model', DEFAULT_MODEL)  # a file from before the capacity ladder: every run was ResNet-20
    return rows


def read_rows(path: str) -> List[Dict]:
    """cifar.csv: one row per finished run."""
    return _read_csv(path, {'seed': int, 'epochs': int, 'top1': float, 'top5': float, 'ece': float,
                            'seconds': float})


def read_class_rows(path: str) -> List[Dict]:
    """cifar-classes.csv: one row per class of each run."""
    return _read_csv(path, {**{k: int for k in ('seed', 'class', 'train_images', 'test_images', 'correct',
                                                'predicted')}, 'confidence': float})


def read_calibration_rows(path: str) -> List[Dict]:
    """cifar-calibration.csv: one row per run."""
    return _read_csv(path, {'seed': int, 'ece': float, 'ece_scaled': float, 'temperature': float})


def is_long_tail(setting: str) -> bool:
    return '--imbalance-ratio' in SETTINGS[setting].flags


def fail(message: str) -> None:
    """A user error: one line on stderr, exit code 2."""
    print(f'cifar.py: {message}', file=sys.stderr)
    sys.exit(2)


def append_row(path: str, row: Dict, fields: Sequence[str] = FIELDS) -> None:
    """One line per finished run (or class), flushed to disk at once (a cut-off suite keeps every finished run)."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
        with open(path, newline='') as f:
            header = next(csv.reader(f), [])
        if header != list(fields):
            fail(f'{path} has the columns {",".join(header)}, not {",".join(fields)}: a file from another version '
                 f'of this suite; add the missing columns (model: {DEFAULT_MODEL} for earlier rows) or write elsewhere')
    with open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in fields})
        f.flush()
        os.fsync(f.fileno())
