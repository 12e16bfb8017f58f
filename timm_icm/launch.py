"""Train with Infinite Class Mixup through an unmodified timm ``train.py`` (Mensink & Mettes, BMVC 2023).

    python -m timm_icm.launch path/to/train.py --icm --mixup 0.2 [ICM flags] [timm flags]
    torchrun --nproc_per_node 2 -m timm_icm.launch path/to/train.py --icm --mixup 0.2 ...

The ICM flags (the group of :func:`timm_icm.cli.add_icm_args`: ``--icm``, ``--icm-axes``,
``--icm-duplicates``, ``--icm-gather``, ``--regmixup``, ``--regmixup-weight``, ``--remix``,
``--remix-kappa``, ``--remix-tau``, ``--logit-adjust``) are taken out of the command line, or out of the YAML file the
script gets with ``-c/--config``; everything else goes to the script. Before the script runs, the
objects of timm that it uses to mix and to compute the soft-target loss are replaced:

- ``timm.data.Mixup`` / ``timm.data.FastCollateMixup`` (tensor path / prefetcher path) become
  :class:`timm_icm.InfiniteClassMixup` / :class:`timm_icm.FastCollateInfiniteClassMixup` with the
  RegMixup and Remix options of the command line (Sec. 4.2 of the paper); Remix's class counts are
  read from the training data set the script creates with ``timm.data.create_dataset``;
- ``timm.loss.SoftTargetCrossEntropy`` (and the one that ``timm.loss.create_classification_loss``
  builds) becomes the training loss of :func:`timm_icm.factory.create_mixed_loss`: the ICM loss
  (Sec. 3, Eq. 9), wrapped in :class:`timm_icm.RegMixupLoss` with ``--regmixup``; without ``--icm``
  the same flags give the plain baselines on ``SoftTargetCrossEntropy``. With ``--logit-adjust TAU``
  that loss is wrapped in :class:`timm_icm.LogitAdjustedLoss` (prior from the training set's class
  counts); without mixing, the criterion the script hands to ``timm.task.ClassificationTask`` is.

Everything else (model, data loading, optimiser, schedule, ``--mixup-off-epoch``, checkpoints,
distributed training) is the script's and timm's. Two additions: the data set names of
:mod:`timm_icm.datasets` (``torch/fashion_mnist`` read in place, ``torch/cifar10/100``,
``cifair10/100``, ``deic_cifair10/100``) are read by :func:`timm_icm.datasets.create_dataset`
(every other name by timm's), and on the prefetcher path with ``--mixup-off-epoch`` the training
loader's workers are not kept across epochs, so that switching mixing off reaches them (timm's
persistent workers hold a copy of the collate mixer made before the switch).

If ICM was asked for and the script does not train through the replaced objects (it computes its
loss some other way, e.g. mixing is off so timm falls back to ``LabelSmoothingCrossEntropy``), the
run stops with a one-line error (:class:`LaunchError`, exit code 2) when the training task gets its
criterion, or at the first training batch, or at the second one if the loss was not called for the
first. The checks run in the main process, never in a data loader worker.

For a training script of your own, use :func:`patch_timm` (a context manager) or :func:`run`.
"""
import argparse
import copy
import inspect
import logging
import os
import runpy
import sys
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data.mixup import FastCollateMixup, Mixup
from timm.loss import SoftTargetCrossEntropy

from . import datasets as icm_datasets
from .cli import ConfigError, add_icm_args, check_icm_args, coerce_config_value, read_config
from .distributed import release_process_group
from .factory import create_mixed_loss, logit_adjusted
from .files import FileProblem, load_checkpoint, read_bytes
from .mixup import FastCollateInfiniteClassMixup, InfiniteClassMixup, mixing_on
from .subsets import class_counts as count_classes

__all__ = ['LaunchError', 'Patched', 'patch_timm', 'parse_icm_args', 'run', 'main']

PROG = 'python -m timm_icm.launch'
_logger = logging.getLogger('timm_icm.launch')

# The timm flags the launcher reads from the script's command line (never removes): whether mixing
# is on decides whether --icm makes sense, --mixup-off-epoch whether loader workers may persist.
_MIXING_FLAGS = (
    (('--mixup',), dict(type=float, default=0.0)),
    (('--cutmix',), dict(type=float, default=0.0)),
    (('--cutmix-minmax',), dict(type=float, nargs='+', default=None)),
    (('--mixup-mode',), dict(type=str, default='batch')),
    (('--mixup-off-epoch',), dict(type=int, default=0)),
    (('--mixup-prob',), dict(type=float, default=1.0)),
    (('--mixup-switch-prob',), dict(type=float, default=0.5)),
    (('--smoothing',), dict(type=float, default=0.1)),
    (('--bce-loss',), dict(action='store_true', default=False)),
)


class LaunchError(BaseException):
    """A one-line reason why the launcher cannot train the script with ICM (exit code 2).

    It derives from ``BaseException``, like ``SystemExit``, so that a script's ``except Exception``
    around its training step cannot swallow it.
    """


# ----------------------------------------------------------------------------- command line

def _icm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, add_help=False, allow_abbrev=False)
    add_icm_args(parser)
    return parser


def _icm_actions() -> Dict[str, argparse.Action]:
    """Option string -> action of every flag of the ICM group."""
    return {opt: action for action in _icm_parser()._actions for opt in action.option_strings}


def split_argv(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split a command line into the ICM flags (with their values) and the script's own flags.

    Order is kept on both sides; ``--`` ends the search (what follows belongs to the script).
    """
    actions = _icm_actions()
    icm, script = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == '--':
            script.extend(argv[i:])
            break
        name = token.split('=', 1)[0] if token.startswith('--') else token
        action = actions.get(name)
        if action is None:
            script.append(token)
            i += 1
            continue
        takes_value = action.nargs is None  # store_true flags have nargs == 0
        if '=' in token or not takes_value:
            icm.append(token)
            i += 1
        else:
            icm.extend(argv[i:i + 2])
            i += 2
    return icm, script


def _config_paths(script_argv: Sequence[str]) -> List[str]:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument('-c', '--config', action='append', default=[])
    known, _ = pre.parse_known_args(list(script_argv))
    return [p for p in known.config if p]


def _read_config(path: str) -> Dict[str, Any]:
    try:
        return read_config(path)
    except ConfigError as e:
        raise LaunchError(str(e)) from None


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    try:
        return coerce_config_value(action, value, where)
    except ConfigError as e:
        raise LaunchError(str(e)) from None


class _ParseFailed(Exception):
    pass


class _QuietParser(argparse.ArgumentParser):
    def error(self, message):
        raise _ParseFailed(message)


def _mixing_args(script_argv: Sequence[str], config: Dict[str, Any]) -> argparse.Namespace:
    """The script's mixing flags as timm's train.py would read them (config values as defaults)."""
    parser = _QuietParser(add_help=False, allow_abbrev=False)
    for flags, kwargs in _MIXING_FLAGS:
        parser.add_argument(*flags, **kwargs)
    defaults = {}
    for action in parser._actions:
        if action.dest in config:
            defaults[action.dest] = _config_value(action, config[action.dest], f'config key {action.dest!r}')
    parser.set_defaults(**defaults)
    try:
        known, _ = parser.parse_known_args(list(script_argv))
    except _ParseFailed:  # a malformed script flag: the script reports it in its own words
        known = parser.parse_known_args([])[0]
    return known


def parse_icm_args(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """The ICM flags of a launcher command line, checked, and the script's command line.

    ICM keys in the script's ``-c/--config`` files (e.g. ``hparams/methods/icmixup.yaml``) act as
    defaults; the command line overrides them. The returned namespace also holds the script's
    mixing flags (``mixup``, ``cutmix``, ``cutmix_minmax``, ``mixup_mode``, ``mixup_off_epoch``,
    ``bce_loss``) as timm's train.py reads them. Raises :class:`LaunchError` with
    :func:`timm_icm.cli.check_icm_args`'s message when the combination is invalid (e.g. ``--icm``
    without ``--mixup``/``--cutmix``).
    """
    icm_tokens, script_argv = split_argv(argv)
    config: Dict[str, Any] = {}
    for path in _config_paths(script_argv):
        config.update(_read_config(path))
    parser = _icm_parser()
    defaults = {}
    for action in parser._actions:
        if action.dest in config:
            defaults[action.dest] = _config_value(action, config[action.dest], f'config key {action.dest!r}')
    parser.set_defaults(**defaults)

    def fail(message):
        raise LaunchError(message)

    parser.error = fail  # one line, raised, instead of argparse's usage block and exit
    args = parser.parse_args(icm_tokens)
    for key, value in vars(_mixing_args(script_argv, config)).items():
        setattr(args, key, value)
    problem = check_icm_args(args)
    if problem:
        raise LaunchError(problem)
    return args, script_argv


# ----------------------------------------------------------------------------- what is patched

_ACTIVE: Optional['Patched'] = None


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get('RANK', 0))


def _describe(obj: Any) -> str:
    if obj is None:
        return 'None'
    name = getattr(obj, '__name__', None) if not isinstance(obj, nn.Module) else None
    return name or type(obj).__name__


class Patched:
    """What :func:`patch_timm` replaced, and what the script then created through it.

    Attributes:
        args: the ICM options (the namespace of :func:`parse_icm_args`).
        targets: the names replaced, e.g. ``'timm.data.Mixup'``.
        mixers: the mixers the script created (``InfiniteClassMixup`` / ``FastCollateInfiniteClassMixup``).
        losses: the training losses the script created in place of ``SoftTargetCrossEntropy``.
        train_dataset: the last data set the script created with ``is_training=True``.
        class_counts: the training class counts given to a Remix mixer, if any.
        loss_calls: how often the created losses were called.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.targets: List[str] = []
        self.mixers: List[Mixup] = []
        self.losses: List[nn.Module] = []
        self.train_dataset = None
        self.class_counts: Optional[torch.Tensor] = None
        self.loss_calls = 0
        self.batches = 0
        self._hooks = []

    @property
    def needs_mixing(self) -> bool:
        """True when an asked-for option exists only on mixed batches (ICM, RegMixup, Remix)."""
        return bool(self.args.icm or self.args.regmixup or self.args.remix)

    @property
    def required(self) -> bool:
        """True when training without the launcher's loss would silently drop an asked-for option."""
        return self.needs_mixing or bool(self.args.logit_adjust)

    def _what(self) -> str:
        names = [f for f in ('icm', 'regmixup', 'remix', 'logit_adjust') if getattr(self.args, f)]
        return ' '.join(f'--{n.replace("_", "-")}' for n in names) or 'the launcher'

    # -- mixer
    def _mixer_options(self, cls: type, args: tuple, kwargs: dict) -> dict:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        if self.needs_mixing and not mixing_on(given['mixup_alpha'], given['cutmix_alpha'], given['cutmix_minmax']):
            raise LaunchError(f'{self._what()} needs mixing, but the script created its mixer with '
                              f'mixup_alpha=0 and cutmix_alpha=0: set --mixup and/or --cutmix')
        options = dict(regmixup=self.args.regmixup, remix=self.args.remix,
                       remix_kappa=self.args.remix_kappa, remix_tau=self.args.remix_tau)
        if self.args.remix:
            options['class_counts'] = self._train_counts('--remix', given['num_classes'])
        return options

    def _train_counts(self, flag: str, num_classes: Optional[int] = None) -> torch.Tensor:
        """The class counts of the training set the script created (for Remix and logit adjustment)."""
        if self.train_dataset is None:
            raise LaunchError(f'{flag} needs the class counts of the training set, but the script created no '
                              'training data set through timm.data.create_dataset(..., is_training=True)')
        if num_classes is None and self.mixers:
            num_classes = self.mixers[0].num_classes
        try:
            targets = icm_datasets.dataset_targets(self.train_dataset)
            counts = count_classes(targets, num_classes)
        except (TypeError, ValueError) as e:
            raise LaunchError(f'{flag} needs the class counts of the training set: {e}') from None
        self.class_counts = counts
        return counts

    def _mixer_created(self, mixer: Mixup, collate: bool) -> None:
        self.mixers.append(mixer)
        path = 'prefetcher path, in place of timm.data.FastCollateMixup' if collate \
            else 'tensor path, in place of timm.data.Mixup'
        options = f'regmixup={mixer.regmixup}, remix={mixer.remix}'
        if mixer.remix:
            options += f' (kappa={mixer.remix_kappa:g}, tau={mixer.remix_tau:g}, class counts ' \
                       f'{[int(c) for c in mixer.class_counts.tolist()]})'
        _info(f'ICM launch: mixer {type(mixer).__mro__[1].__name__}(mixup_alpha={mixer.mixup_alpha:g}, '
              f'cutmix_alpha={mixer.cutmix_alpha:g}, mode={mixer.mode}, {options}) ({path})')

    # -- loss
    def _make_loss(self) -> nn.Module:
        return self._adopt(create_mixed_loss(self.args), 'in place of timm.loss.SoftTargetCrossEntropy')

    def _adopt(self, loss: nn.Module, how: str) -> nn.Module:
        """The run's training loss: ``loss``, logit-adjusted with ``--logit-adjust``, counted and logged."""
        try:
            loss = logit_adjusted(self.args, loss, self._train_counts('--logit-adjust')
                                  if self.args.logit_adjust else None)
        except ValueError as e:
            raise LaunchError(f'--logit-adjust: {e}') from None
        self._hooks.append(loss.register_forward_pre_hook(_count_loss_call))
        self.losses.append(loss)
        _info(f'ICM launch: loss {loss} ({how})')
        return loss

    def _on_loss_call(self) -> None:
        self.loss_calls += 1
        if self.loss_calls == 1 and (self.args.regmixup or self.args.remix) and not self.mixers:
            raise LaunchError(f'{self._what()} needs the launcher\'s mixer, but the script mixes with one it '
                              f'imported some other way (use timm.data.Mixup / timm.data.FastCollateMixup)')

    # -- checks
    def _on_criterion(self, criterion: Any) -> Any:
        """The criterion the training task gets: checked, and logit-adjusted when only that was asked for."""
        if not self.required or any(criterion is loss for loss in self.losses):
            return criterion
        if not self.needs_mixing and not self.losses and isinstance(criterion, nn.Module):
            return self._adopt(criterion, "the training task's criterion")
        raise LaunchError(
            f'the script trains with {_describe(criterion)}, not the {self._what()} loss: '
            + self._loss_hint(created=bool(self.losses)))

    def _loss_hint(self, created: bool) -> str:
        if created:
            return ('the script created timm.loss.SoftTargetCrossEntropy but trains with a loss it builds some other '
                    'way; train with that object, or use timm_icm.InfiniteClassCrossEntropy in the script')
        return ('the launcher replaces timm.loss.SoftTargetCrossEntropy, which timm\'s train.py creates only with '
                '--mixup/--cutmix on and --bce-loss off; a script that builds its loss some other way needs '
                'timm_icm.InfiniteClassCrossEntropy itself')

    def _on_batch(self) -> None:
        self.batches += 1
        if not self.required:
            return
        if self.batches == 1 and not self.losses:
            raise LaunchError(f'{self._what()}: the script reached its first training batch without creating '
                              f'timm.loss.SoftTargetCrossEntropy; ' + self._loss_hint(created=False))
        if self.batches == 2 and self.loss_calls == 0:
            raise LaunchError(f'{self._what()}: the launcher\'s loss was not called for the first training batch: '
                              + self._loss_hint(created=True))


    def check_trained(self) -> None:
        """After the script: an asked-for option that no batch ever reached is an error, not a success."""
        if self.required and self.loss_calls == 0 and _rank() == 0:
            raise LaunchError(
                f'{self._what()}: the script finished without calling the launcher\'s loss: it trained with a '
                f'loss it built itself (without mixing, timm\'s older train.py calls nn.CrossEntropyLoss directly); '
                f'train through timm.task.ClassificationTask, add --mixup/--cutmix, or use train_icm.py')


def _info(message: str) -> None:
    if _rank() != 0:
        return
    if _logger.isEnabledFor(logging.INFO) and logging.getLogger().handlers:
        _logger.info(message)
    else:  # the script has not set up logging: the line must still be seen
        print(message, flush=True)


def _count_loss_call(module: nn.Module, inputs: Any) -> None:
    if _ACTIVE is not None and not _in_worker():
        _ACTIVE._on_loss_call()


def _on_batch() -> None:
    if _ACTIVE is not None and not _in_worker():
        _ACTIVE._on_batch()


class _LaunchedMixup(InfiniteClassMixup):
    """``timm.data.Mixup`` while :func:`patch_timm` is active: ICM's mixer with the run's options."""

    def __init__(self, *args, **kwargs):
        state = _ACTIVE
        options = state._mixer_options(Mixup, args, kwargs) if state is not None else {}
        super().__init__(*args, **options, **kwargs)
        if state is not None:
            state._mixer_created(self, collate=False)

    def __call__(self, x, target):
        _on_batch()  # the tensor-path mixer is called in the main process, once per training batch
        return super().__call__(x, target)


class _LaunchedFastCollateMixup(FastCollateInfiniteClassMixup):
    """``timm.data.FastCollateMixup`` while :func:`patch_timm` is active (runs in loader workers)."""

    def __init__(self, *args, **kwargs):
        state = _ACTIVE
        options = state._mixer_options(FastCollateMixup, args, kwargs) if state is not None else {}
        super().__init__(*args, **options, **kwargs)
        if state is not None:
            state._mixer_created(self, collate=True)


class _LaunchedSoftTargetCrossEntropy(SoftTargetCrossEntropy):
    """``timm.loss.SoftTargetCrossEntropy`` while :func:`patch_timm` is active.

    Creating one returns the run's training loss itself (``InfiniteClassCrossEntropy``,
    ``RegMixupLoss``, or timm's ``SoftTargetCrossEntropy`` for the baselines), not an instance of
    this class.
    """

    def __new__(cls, *args, **kwargs):
        if _ACTIVE is None:
            return SoftTargetCrossEntropy(*args, **kwargs)
        return _ACTIVE._make_loss()


def _wrap_create_dataset(original):
    sig = inspect.signature(original)

    def create_dataset(*args, **kwargs):
        given = dict(sig.bind(*args, **kwargs).arguments)
        given.update(given.pop('kwargs', {}))
        is_training = given.get('is_training', sig.parameters['is_training'].default)
        name = given['name']
        if isinstance(name, str) and name.lower() in icm_datasets.DATASET_NAMES:
            given.setdefault('split', sig.parameters['split'].default)  # timm's default, not ours
            try:
                dataset = icm_datasets.create_dataset(**given)
            except (FileNotFoundError, FileProblem, icm_datasets.DataError) as e:
                # Missing or broken data of a data set the launcher reads: one line, past the script's handlers.
                raise LaunchError(' '.join(str(e).split())) from None
        else:
            dataset = original(*args, **kwargs)
        if _ACTIVE is not None and is_training:
            _ACTIVE.train_dataset = dataset
        return dataset

    create_dataset.__wrapped__ = original
    create_dataset.__doc__ = original.__doc__
    return create_dataset


def _wrap_create_loader(original):
    sig = inspect.signature(original)

    def create_loader(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        collate = bound.arguments.get('collate_fn')
        if isinstance(collate, _LaunchedFastCollateMixup) and _ACTIVE is not None:
            off_epoch = getattr(_ACTIVE.args, 'mixup_off_epoch', None)
            if off_epoch is None or off_epoch > 0:
                # Persistent workers keep the collate mixer they were started with: switching mixing
                # off at --mixup-off-epoch would never reach them.
                bound.arguments['persistent_workers'] = False
        return original(*bound.args, **bound.kwargs)

    create_loader.__wrapped__ = original
    create_loader.__doc__ = original.__doc__
    return create_loader


def _wrap_resolve_loss(original):
    def resolve_classification_loss(*args, **kwargs):
        criterion = original(*args, **kwargs)
        if _ACTIVE is not None:
            criterion = _ACTIVE._on_criterion(criterion)
        return criterion

    resolve_classification_loss.__wrapped__ = original
    return resolve_classification_loss


def _wrap_prefetch_iter(original):
    def __iter__(self):
        collate = getattr(getattr(self, 'loader', None), 'collate_fn', None)
        if not isinstance(collate, _LaunchedFastCollateMixup):
            yield from original(self)
            return
        # The collate mixer may run in worker processes, where an error would come back wrapped
        # (or not at all): check each training batch here, in the main process.
        for batch in original(self):
            _on_batch()
            yield batch

    __iter__.__wrapped__ = original
    return __iter__


def _import(module: str):
    try:
        return __import__(module, fromlist=['_'])
    except ImportError:  # an older timm 1.0.x without it
        return None


def _replacements() -> List[Tuple[Any, str, Any]]:
    """(owner, attribute, new value) of everything patch_timm replaces, for the installed timm."""
    import timm.data
    import timm.data.loader
    import timm.loss
    out: List[Tuple[Any, str, Any]] = [
        # The mixers: RegMixup's clean + mixed batch and Remix's label weights exist only in ICM's mixers.
        (timm.data, 'Mixup', _LaunchedMixup),
        (timm.data, 'FastCollateMixup', _LaunchedFastCollateMixup),
        # The loss of mixed batches: where the ICM (RegMixup, LA) loss enters the script.
        (timm.loss, 'SoftTargetCrossEntropy', _LaunchedSoftTargetCrossEntropy),
        # The training set: Remix and LA need its class counts, and timm cannot read our data set names.
        (timm.data, 'create_dataset', _wrap_create_dataset(timm.data.create_dataset)),
        # Persistent loader workers would keep mixing after --mixup-off-epoch (the collate mixer is theirs).
        (timm.data, 'create_loader', _wrap_create_loader(timm.data.create_loader)),
        # The prefetcher path's batches: the only main-process hook to stop a run the asked-for loss never sees.
        (timm.data.loader.PrefetchLoader, '__iter__', _wrap_prefetch_iter(timm.data.loader.PrefetchLoader.__iter__)),
    ]
    # Not timm.loss.cross_entropy / timm.data.mixup themselves: their classes name themselves in
    # super(...) calls, so replacing the names there would break the originals.
    # timm's loss factory holds its own reference to the class it builds for mixed batches.
    factory = _import('timm.loss._loss_factory')
    if factory is not None and getattr(factory, 'SoftTargetCrossEntropy', None) is SoftTargetCrossEntropy:
        out.append((factory, 'SoftTargetCrossEntropy', _LaunchedSoftTargetCrossEntropy))
    # The criterion a ClassificationTask trains with: checked (never a loss other than ours when ICM was asked
    # for), and logit-adjusted when LA is the only option and nothing mixes.
    resolve = None
    for module in ('timm.task.classification', 'timm.task.distillation', 'timm.task.token_distillation',
                   'timm.task'):
        mod = _import(module)
        if mod is not None and hasattr(mod, 'resolve_classification_loss'):
            resolve = resolve or _wrap_resolve_loss(mod.resolve_classification_loss)
            out.append((mod, 'resolve_classification_loss', resolve))
    return out


def _name(owner: Any, attr: str) -> str:
    prefix = owner.__name__ if isinstance(owner, type(sys)) else f'{owner.__module__}.{owner.__qualname__}'
    return f'{prefix}.{attr}'


@contextmanager
def patch_timm(args: Optional[argparse.Namespace] = None, **options: Any) -> Iterator[Patched]:
    """Replace timm's mixers and soft-target loss with ICM's while the ``with`` block runs.

    Args:
        args: the ICM options, e.g. from :func:`parse_icm_args` or a parser with
            :func:`timm_icm.cli.add_icm_args`; missing options take the group's defaults.
        **options: ICM options by name, overriding ``args`` (``patch_timm(icm=True)``).

    Yields a :class:`Patched` record of what was replaced and what the code in the block created.
    Code in the block that imports ``Mixup``, ``FastCollateMixup``, ``SoftTargetCrossEntropy``,
    ``create_dataset`` or ``create_loader`` from ``timm.data`` / ``timm.loss`` gets ICM's versions
    (import inside the block: a name bound before it keeps timm's object). Everything is restored
    on exit. Example::

        with patch_timm(icm=True) as patched:
            runpy.run_path('train.py', run_name='__main__')
    """
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError('patch_timm is already active')
    merged = _icm_parser().parse_args([])
    if args is not None:
        for key, value in vars(args).items():
            setattr(merged, key, value)
    for key, value in options.items():
        setattr(merged, key, value)
    # The mixing flags are known only once the script creates its mixer (checked there).
    probe = copy.copy(merged)
    for key, value in dict(mixup=1.0, cutmix=0.0, cutmix_minmax=None).items():
        if not hasattr(probe, key):
            setattr(probe, key, value)
    problem = check_icm_args(probe)
    if problem:
        raise LaunchError(problem)

    state = Patched(merged)
    saved = []
    try:
        for owner, attr, value in _replacements():
            saved.append((owner, attr, owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)))
            setattr(owner, attr, value)
            state.targets.append(_name(owner, attr))
        _ACTIVE = state
        yield state
    finally:
        _ACTIVE = None
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)
        for hook in state._hooks:
            hook.remove()


# ----------------------------------------------------------------------------- running a script

def run(script: str, argv: Sequence[str] = ()) -> int:
    """Run a timm-style training script with ICM, in this process; return its exit code.

    ``argv`` is the script's command line with the ICM flags mixed in (as after the script's path
    on the launcher's command line). Raises :class:`LaunchError` for a problem with the ICM flags
    or when the script does not train through the replaced objects.
    """
    args, script_argv = parse_icm_args(argv)
    _check_script(script)
    _check_checkpoints(script_argv)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *script_argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script.py` does
    try:
        with patch_timm(args) as patched:
            try:
                runpy.run_path(script, run_name='__main__')
            except SystemExit as e:
                if e.code is not None and not isinstance(e.code, int):
                    print(e.code, file=sys.stderr)
                    return 1
                return e.code or 0  # e.g. the script's --help: nothing was meant to train
            patched.check_trained()
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
    return 0


# The script's flags that name a checkpoint to load, as timm's train.py spells them.
CHECKPOINT_FLAGS = ('--resume', '--initial-checkpoint')


def _check_checkpoints(script_argv: Sequence[str]) -> None:
    """A checkpoint the script will load must be a complete torch checkpoint that names nothing outside torch's
    allow-list. timm's loaders would refuse such a pickle too (``weights_only``), but with a traceback; this
    reads it the same safe way first, so that the problem is one line naming the file."""
    for i, arg in enumerate(script_argv):
        flag, equals, value = arg.partition('=')
        if flag not in CHECKPOINT_FLAGS:
            continue
        path = value if equals else (script_argv[i + 1] if i + 1 < len(script_argv) else '')
        if path:
            try:
                load_checkpoint(path, flag)
            except FileProblem as e:
                raise LaunchError(str(e)) from None


def _check_script(script: str) -> None:
    """The training script must be a readable file of Python (a copy cut short fails to compile)."""
    try:
        source = read_bytes(script, 'training script', 'a Python file')
    except FileProblem as e:
        raise LaunchError(str(e)) from None
    try:
        compile(source, script, 'exec', dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        where = f'line {e.lineno}: ' if getattr(e, 'lineno', None) else ''
        raise LaunchError(f'training script {script}: is truncated or not valid Python ({where}'
                          f'{getattr(e, "msg", None) or e})') from None


def _help() -> str:
    parser = argparse.ArgumentParser(
        prog=PROG, usage=f'{PROG} SCRIPT [ICM flags] [flags of SCRIPT]', add_help=False,
        description='Run an unmodified timm train.py (SCRIPT) with Infinite Class Mixup: the ICM flags below '
                    'are taken out of the command line (or the -c/--config YAML), every other flag goes to SCRIPT, '
                    'and timm.data.Mixup / FastCollateMixup / timm.loss.SoftTargetCrossEntropy become ICM\'s.',
        epilog=f'Example: {PROG} train.py --data-dir DATA --model resnet50 --mixup 0.2 --icm. '
               f'Distributed: torchrun --nproc_per_node N -m timm_icm.launch train.py ...')
    add_icm_args(parser)
    return parser.format_help()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m timm_icm.launch SCRIPT [ICM flags] [script flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (['-h'], ['--help']):
        print(_help())
        return 0
    icm_flags, rest = split_argv(argv)  # ICM flags may also come before the script
    if not rest or rest[0].startswith('-'):
        print(f'usage: {PROG} SCRIPT [ICM flags] [flags of SCRIPT] (see --help)', file=sys.stderr)
        return 2
    try:
        return run(rest[0], icm_flags + rest[1:])
    except LaunchError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr, flush=True)
        return 2
    finally:
        release_process_group()  # one the script left: it stopped early, or never destroys its own


if __name__ == '__main__':
    # Run the imported module's main, not this __main__ copy: the patched classes must be the ones
    # of timm_icm.launch (loader workers unpickle them from there).
    from timm_icm.launch import main as _main
    sys.exit(_main())
