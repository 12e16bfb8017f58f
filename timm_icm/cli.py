"""Command line of ``train_icm.py``: timm ``train.py``'s flags, ICM's flag group, strict YAML configs.

The flag names and defaults are timm's (``train.py`` of timm 1.0), so a timm user's commands and
YAML files carry over. ``add_icm_args`` is the ICM group alone, for any timm-style parser (the
launcher for an unmodified upstream ``train.py`` uses it too).

Unlike timm, a YAML key that is not a flag, or a value of the wrong type, is an error naming it.
Several ``-c`` files compose: later files override earlier ones, the command line overrides all.
"""
import argparse
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml
from timm import utils

from .files import FileProblem, load_yaml
from .loss import AXES, DUPLICATES, UNMIXED
from .mixup import mixing_on
from .regmixup import regmixup_weight_problem
from .remix import remix_thresholds_problem

MIXUP_MODES = ('batch', 'pair', 'elem', 'half')


def add_icm_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The Infinite Class Mixup flag group. Without ``--icm`` the same flags give the plain baselines."""
    group = parser.add_argument_group('Infinite Class Mixup parameters')
    group.add_argument('--icm', action='store_true', default=False,
                       help='Train with the Infinite Class Mixup loss (needs --mixup and/or --cutmix).')
    group.add_argument('--icm-axes', default='both', choices=AXES,
                       help='Contrastive axes of the ICM loss: both (Eq. 9), class (Eq. 5) or pair (Eq. 7).')
    group.add_argument('--icm-duplicates', default='paper', choices=DUPLICATES,
                       help='paper: count equal targets separately; merge: class axis over distinct targets.')
    group.add_argument('--icm-unmixed', default='icm', choices=UNMIXED,
                       help='A batch with no mixed row (--mixup-prob < 1, --mixup-off-epoch): icm, the contrast '
                            'all the same (default); ce, the soft-target cross-entropy.')
    group.add_argument('--icm-gather', action='store_true', default=False,
                       help='Distributed: contrast against the global batch (all-gather) instead of the local one.')
    group.add_argument('--regmixup', action='store_true', default=False,
                       help='RegMixup: CE on the clean batch + weight x the mixed-batch loss (paper: --mixup 20).')
    group.add_argument('--regmixup-weight', type=float, default=1.0, metavar='ETA',
                       help='RegMixup weight eta of the mixed-batch loss (default: 1.0).')
    group.add_argument('--remix', action='store_true', default=False,
                       help='Remix label weights from the training class counts (long-tailed data).')
    group.add_argument('--remix-kappa', type=float, default=3.0, metavar='KAPPA',
                       help='Remix imbalance-ratio threshold kappa (default: 3.0).')
    group.add_argument('--remix-tau', type=float, default=0.5, metavar='TAU',
                       help='Remix interpolation threshold tau (default: 0.5).')
    group.add_argument('--logit-adjust', type=float, default=0.0, metavar='TAU',
                       help='Logit adjustment (Menon et al. 2021): train on logits + TAU x log(class prior of the '
                            'training set), with or without mixing; 1 is the usual choice, 0 is off (default).')
    return group


def _number_problem(flag: str, value: Any, low: float, high: float = math.inf, low_open: bool = False,
                    high_open: bool = False, meaning: str = '') -> Optional[str]:
    """The message for a number flag outside its range (NaN and infinities included), or None."""
    if value is None:
        return None
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and \
        (value < high if high_open else value <= high)
    if ok:
        return None
    if high == math.inf:
        bound = f'a finite number {">" if low_open else ">="} {low:g}'
    else:
        bound = f'in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
    return f'{flag} must be {bound}{meaning}; got {value}'


def check_mixing_args(args: argparse.Namespace) -> Optional[str]:
    """The first mixing parameter (timm's and ICM's) that is negative, non-finite or out of its range, or None.

    Flags a namespace lacks (e.g. the launcher reads only some of the script's) are skipped.
    """
    def get(dest):
        return getattr(args, dest, None)

    for problem in (
            _number_problem('--mixup', get('mixup'), 0, meaning=' (the Beta(alpha, alpha) of Mixup; 0 is off)'),
            _number_problem('--cutmix', get('cutmix'), 0, meaning=' (the Beta(alpha, alpha) of CutMix; 0 is off)'),
            _number_problem('--mixup-prob', get('mixup_prob'), 0, 1),
            _number_problem('--mixup-switch-prob', get('mixup_switch_prob'), 0, 1),
            _number_problem('--smoothing', get('smoothing'), 0, 1, high_open=True),
            _number_problem('--logit-adjust', get('logit_adjust'), 0, meaning=' (0 is off)')):
        if problem:
            return problem
    for flag in ('--regmixup-weight', '--remix-kappa', '--remix-tau'):
        value = get(flag[2:].replace('-', '_'))
        if value is not None and not math.isfinite(value):
            return f'{flag} must be a finite number; got {value}'
    # The ranges of the RegMixup and Remix options are their modules' (one definition each).
    problem = None
    if get('regmixup_weight') is not None:
        problem = regmixup_weight_problem(args.regmixup_weight, '--regmixup-weight')
    if problem is None and get('remix_kappa') is not None and get('remix_tau') is not None:
        problem = remix_thresholds_problem(args.remix_kappa, args.remix_tau, '--remix-kappa', '--remix-tau')
    if problem:
        return problem
    minmax = get('cutmix_minmax')
    if minmax is not None and not (len(minmax) == 2 and all(math.isfinite(v) for v in minmax)
                                   and 0 <= minmax[0] < minmax[1] <= 1):
        return (f'--cutmix-minmax takes two numbers MIN MAX with 0 <= MIN < MAX <= 1 (the box size relative to '
                f'the image); got {" ".join(f"{v:g}" for v in minmax)}')
    if (get('mixup_off_epoch') or 0) < 0:
        return f'--mixup-off-epoch must be >= 0 (0 is never); got {args.mixup_off_epoch}'
    return None


def check_icm_args(args: argparse.Namespace) -> Optional[str]:
    """The first problem with the mixing and ICM flags as a one-line message, or None."""
    problem = check_mixing_args(args)
    if problem:
        return problem
    mixup_active = mixing_on(args.mixup, args.cutmix, args.cutmix_minmax)
    for flag in ('icm', 'regmixup', 'remix'):
        if getattr(args, flag) and not mixup_active:
            return f'--{flag} needs mixing: set --mixup ALPHA and/or --cutmix ALPHA (the paper uses --mixup 0.2)'
    defaults = {'icm_axes': 'both', 'icm_duplicates': 'paper', 'icm_unmixed': 'icm', 'icm_gather': False}
    for dest, default in defaults.items():
        if getattr(args, dest) != default and not args.icm:
            return f'--{dest.replace("_", "-")} only applies to the ICM loss: add --icm'
    if getattr(args, 'mixup_mode', 'batch') not in MIXUP_MODES:
        return f'--mixup-mode must be one of {", ".join(MIXUP_MODES)}; got {args.mixup_mode!r}'
    if getattr(args, 'bce_loss', False) and args.icm:
        return '--bce-loss and --icm are two different losses: choose one'
    return None


def _add_timm_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's flags (same names and defaults) that train_icm.py implements."""
    group = parser.add_argument_group('Dataset parameters')
    parser.add_argument('data', nargs='?', metavar='DIR', const=None,
                        help='path to dataset (positional is *deprecated*, use --data-dir)')
    group.add_argument('--data-dir', metavar='DIR', help='path to dataset (root dir)')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help='dataset type + name ("<type>/<name>"), e.g. torch/cifar100, torch/fashion_mnist, '
                            'cifair100, deic_cifair10 (default: ImageFolder or ImageTar if empty)')
    group.add_argument('--train-split', metavar='NAME', default='train')
    group.add_argument('--val-split', metavar='NAME', default='validation')
    group.add_argument('--dataset-download', action='store_true', default=False)
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME')
    group.add_argument('--input-img-mode', default=None, type=str)

    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', default='resnet50', type=str, metavar='MODEL')
    group.add_argument('--pretrained', action='store_true', default=False)
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help='Resume model, optimizer and schedule from a checkpoint; the run continues in its folder.')
    group.add_argument('--no-resume-opt', action='store_true', default=False)
    group.add_argument('--num-classes', type=int, default=None, metavar='N')
    group.add_argument('--gp', default=None, type=str, metavar='POOL')
    group.add_argument('--img-size', type=int, default=None, metavar='N')
    group.add_argument('--in-chans', type=int, default=None, metavar='N')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N')
    group.add_argument('--crop-pct', default=None, type=float, metavar='N')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
    group.add_argument('--channels-last', action='store_true', default=False)
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N')
    group.add_argument('--grad-checkpointing', action='store_true', default=False)
    group.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor')
    group.add_argument('--torchcompile-mode', type=str, default=None)

    group = parser.add_argument_group('Device parameters')
    group.add_argument('--device', default='cuda', type=str,
                       help='Device (default: cuda; falls back to cpu when no GPU is available)')
    group.add_argument('--amp', action='store_true', default=False)
    group.add_argument('--amp-dtype', default='float16', type=str, choices=('float16', 'bfloat16'))
    group.add_argument('--no-ddp-bb', action='store_true', default=False)
    group.add_argument('--local_rank', default=0, type=int)

    group = parser.add_argument_group('Optimizer parameters')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M')
    group.add_argument('--weight-decay', type=float, default=2e-5)
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM')
    group.add_argument('--clip-mode', type=str, default='norm')
    group.add_argument('--layer-decay', type=float, default=None)
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=utils.ParseKwargs)

    group = parser.add_argument_group('Learning rate schedule parameters')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER')
    group.add_argument('--sched-on-updates', action='store_true', default=False)
    group.add_argument('--lr', type=float, default=None, metavar='LR')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N')
    group.add_argument('--lr-k-decay', type=float, default=1.0)
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR')
    group.add_argument('--epochs', type=int, default=300, metavar='N')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N')
    group.add_argument('--warmup-prefix', action='store_true', default=False)
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE')

    group = parser.add_argument_group('Augmentation and regularization parameters')
    group.add_argument('--no-aug', action='store_true', default=False)
    group.add_argument('--train-crop-mode', type=str, default=None)
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO')
    group.add_argument('--hflip', type=float, default=0.5)
    group.add_argument('--vflip', type=float, default=0.)
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT')
    group.add_argument('--aa', type=str, default=None, metavar='NAME')
    group.add_argument('--aug-repeats', type=float, default=0)
    group.add_argument('--bce-loss', action='store_true', default=False)
    group.add_argument('--reprob', type=float, default=0., metavar='PCT')
    group.add_argument('--remode', type=str, default='pixel')
    group.add_argument('--recount', type=int, default=1)
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha, mixup enabled if > 0.')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha, cutmix enabled if > 0.')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    group.add_argument('--mixup-prob', type=float, default=1.0)
    group.add_argument('--mixup-switch-prob', type=float, default=0.5)
    group.add_argument('--mixup-mode', type=str, default='batch', help='"batch", "pair", or "elem"')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N')
    group.add_argument('--smoothing', type=float, default=0.1)
    group.add_argument('--train-interpolation', type=str, default='random')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT')
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT')

    group = parser.add_argument_group('Batch norm parameters')
    group.add_argument('--bn-momentum', type=float, default=None)
    group.add_argument('--bn-eps', type=float, default=None)
    group.add_argument('--sync-bn', action='store_true')
    group.add_argument('--dist-bn', type=str, default='reduce')

    group = parser.add_argument_group('Model exponential moving average parameters')
    group.add_argument('--model-ema', action='store_true', default=False)
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False)
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--model-ema-warmup', action='store_true')

    group = parser.add_argument_group('Miscellaneous parameters')
    group.add_argument('--seed', type=int, default=42, metavar='S')
    group.add_argument('--worker-seeding', type=str, default='all')
    group.add_argument('--log-interval', type=int, default=50, metavar='N')
    group.add_argument('--val-interval', type=int, default=1, metavar='N')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N')
    group.add_argument('--pin-mem', action='store_true', default=False)
    group.add_argument('--no-prefetcher', action='store_true', default=False)
    group.add_argument('--output', default='', type=str, metavar='PATH')
    group.add_argument('--experiment', default='', type=str, metavar='NAME')
    group.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC')


def _add_data_setting_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Data settings of the paper (any dataset)')
    group.add_argument('--train-fraction', type=float, default=None, metavar='F',
                       help='Train on a stratified fraction of the training set (Table 1 right: 1, .5, .25, .1).')
    group.add_argument('--train-samples-per-class', type=int, default=None, metavar='N',
                       help='Train on N images of each class (data-constrained settings).')
    group.add_argument('--imbalance-ratio', type=float, default=None, metavar='R',
                       help='Long-tailed training set, exponential profile (Cui et al.): 0.1, 0.01 in the paper.')
    group.add_argument('--subset-seed', type=int, default=0, metavar='S',
                       help='Seed of the training subset (default: 0), independent of --seed.')
    group.add_argument('--eval-samples-per-class', type=int, default=None, metavar='N',
                       help='Evaluate on N images per class of the eval split (seeded by --subset-seed), for '
                            'quick CPU runs; the paper evaluates on the whole test set (default).')
    group.add_argument('--keep-last-batch', action='store_true', default=False,
                       help="Train on each epoch's last, smaller batch too, as the paper's code (torch's DataLoader "
                            "default) does; timm's training loader drops it (500 images at batch 128: 4 steps, not 3).")
    group.add_argument('--cifar-aug', action='store_true', default=False,
                       help="The paper's CIFAR augmentation instead of timm's: crop with padding 4, flip, rotation 15.")
    group.add_argument('--dry-run', action='store_true', default=False,
                       help='Build model, data, mixer, loss, optimizer and scheduler, print them, and exit.')


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def create_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog='train_icm.py', description='timm training with Infinite Class Mixup', allow_abbrev=False,
        epilog='Configs: -c FILE (repeatable, later files win); command-line flags override config values.')
    parser.add_argument('-c', '--config', action='append', default=[], metavar='FILE',
                        help='YAML file of flag values (dest names, e.g. batch_size: 128); may be repeated')
    _add_timm_args(parser)
    _add_data_setting_args(parser)
    add_icm_args(parser)
    return parser


class ConfigError(ValueError):
    """A config file problem; the message is one line that names the file and the key."""


def coerce_config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A config value converted by its flag's type and checked as the command line would check it."""
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f'{where} expects true or false; got {value!r}')
        return value
    if isinstance(action, utils.ParseKwargs):
        if not isinstance(value, dict):
            raise ConfigError(f'{where} expects a mapping; got {value!r}')
        return value
    many = action.nargs in ('+', '*') or isinstance(action.nargs, int)
    items = value if many else [value]
    if many and not isinstance(value, (list, tuple)):
        raise ConfigError(f'{where} expects a list; got {value!r}')
    if not many and isinstance(value, (list, tuple, dict)):
        raise ConfigError(f'{where} expects one value; got {value!r}')
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise ConfigError(f'{where} expects {action.nargs} values; got {len(items)}')
    converted = []
    for item in items:
        if isinstance(item, bool) or isinstance(item, (list, dict)):
            raise ConfigError(f'{where} expects {getattr(action.type, "__name__", "a value")}; got {item!r}')
        kind = action.type or str
        if kind is int and isinstance(item, float) and not item.is_integer():
            raise ConfigError(f'{where} expects int; got {item!r}')
        try:
            item = kind(item)
        except (TypeError, ValueError):
            raise ConfigError(f'{where} expects {getattr(kind, "__name__", kind)}; got {item!r}') from None
        if action.choices is not None and item not in action.choices:
            raise ConfigError(f'{where} must be one of {", ".join(map(str, action.choices))}; got {item!r}')
        converted.append(item)
    return converted if many else converted[0]


def read_config(path: str) -> Dict[str, Any]:
    """One YAML config file as a mapping of flag destinations (``batch-size`` -> ``batch_size``) to values."""
    try:
        cfg = load_yaml(path, 'config')
    except FileProblem as e:
        raise ConfigError(str(e)) from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(f'config {path} must be a mapping of flag names to values; got {type(cfg).__name__}')
    return {str(key).replace('-', '_'): value for key, value in cfg.items()}


def load_config(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read one YAML config, checking every key against the parser's flags and every value's type."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    out = {}
    for dest, value in read_config(path).items():
        if dest not in actions:
            raise ConfigError(f'config {path}: unknown key {dest!r} (not a flag of train_icm.py; see --help)')
        out[dest] = coerce_config_value(actions[dest], value, f'config {path}: key {dest!r}')
    return out


def parse_args(argv: Optional[Sequence[str]] = None,
               parser: Optional[argparse.ArgumentParser] = None) -> Tuple[argparse.Namespace, str]:
    """Parse configs then flags; any problem is one line on stderr and exit code 2 (argparse's convention)."""
    parser = parser or create_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', action='append', default=[])
    known, _ = pre.parse_known_args(argv)
    defaults: Dict[str, Any] = {}
    try:
        for path in known.config:
            defaults.update(load_config(path, parser))
    except ConfigError as e:
        parser.error(str(e))
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    problem = check_icm_args(args) or _check_data_settings(args)
    if not problem and args.bce_loss:  # accepted for timm's command line, but train_icm.py builds no BCE loss
        problem = ('--bce-loss: train_icm.py does not build timm\'s binary cross-entropy loss; run timm\'s own '
                   'train.py for it (python -m timm_icm.launch train.py ... keeps its whole command line)')
    if problem:
        parser.error(problem)
    args_text = yaml.safe_dump({k: v for k, v in vars(args).items() if k != 'config'}, default_flow_style=False)
    return args, args_text


def _check_data_settings(args: argparse.Namespace) -> Optional[str]:
    if args.train_fraction is not None and not 0 < args.train_fraction <= 1:
        return f'--train-fraction must be in (0, 1]; got {args.train_fraction}'
    if args.train_samples_per_class is not None and args.train_samples_per_class < 1:
        return f'--train-samples-per-class must be >= 1; got {args.train_samples_per_class}'
    if args.eval_samples_per_class is not None and args.eval_samples_per_class < 1:
        return f'--eval-samples-per-class must be >= 1; got {args.eval_samples_per_class}'
    if args.imbalance_ratio is not None and not 0 < args.imbalance_ratio <= 1:
        return f'--imbalance-ratio must be in (0, 1]; got {args.imbalance_ratio}'
    if args.batch_size < 1:
        return f'--batch-size must be >= 1; got {args.batch_size}'
    if args.batch_size < 2 and mixing_on(args.mixup, args.cutmix, args.cutmix_minmax):
        return f'mixing pairs images within a batch: --batch-size must be >= 2; got {args.batch_size}'
    if args.num_classes is not None and args.num_classes < 1:
        return f'--num-classes must be >= 1; got {args.num_classes}'
    if args.in_chans is not None and args.in_chans < 1:
        return f'--in-chans must be >= 1; got {args.in_chans}'
    if args.input_size is not None and min(args.input_size) < 1:
        return f'--input-size takes CHANNELS HEIGHT WIDTH, each >= 1; got {" ".join(map(str, args.input_size))}'
    if args.in_chans is not None and args.input_size is not None and args.in_chans != args.input_size[0]:
        return (f'--in-chans {args.in_chans} and --input-size {" ".join(map(str, args.input_size))} disagree on the '
                f'number of channels: give one of them, or the same count in both')
    channels = args.in_chans or (args.input_size[0] if args.input_size else 3)
    for flag in ('mean', 'std'):
        values = getattr(args, flag)
        if values is not None and len(values) not in (1, channels):
            return (f'--{flag} gives {len(values)} values for {channels}-channel images (--in-chans / --input-size): '
                    f'give {channels}' + (' (or 1 for all)' if channels > 1 else ''))
        if values is not None and flag == 'std' and not all(math.isfinite(v) and v > 0 for v in values):
            return f'--std must be finite numbers > 0; got {" ".join(f"{v:g}" for v in values)}'
    return None
