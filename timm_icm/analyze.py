"""What does Infinite Class Mixup learn differently? The analysis of Sec. 4.3 / Figure 4 of the paper.

    python -m timm_icm.analyze --checkpoint output/mixup/last.pth.tar --checkpoint output/icmixup/last.pth.tar \\
        --dataset torch/fashion_mnist --data-dir /usr/share/datasets/fashion-mnist --output figure4

One test image per class is drawn (seeded, ``--seed``). For every ordered pair of classes (a, b),
a != b, and every lambda in {0, 0.1, ..., 1} the image ``x = lambda * x_a + (1 - lambda) * x_b`` is
fed to each trained model, and two numbers are recorded:

- confidence (Figure 4 left): "computed by their class-independent squared norms" (Sec. 4.3).
  Here: the squared L2 norm of the penultimate features, ``model.forward_head(
  model.forward_features(x), pre_logits=True)``, i.e. the input of the linear classifier.
- class-confidence difference (Figure 4 right): "the dot product of the first class [minus] the
  dot product with the other class". Here: logit of class a minus logit of class b, i.e. the dot
  products with the two classifiers including their biases, ``(w_a - w_b) . r + (b_a - b_b)``.
  Positive when the model leans towards a, the class weighted by lambda.

Per checkpoint and lambda, the CSV holds the mean and std (population std, over the pairs) of both,
and, with matplotlib (the ``plot`` extra), one PNG per checkpoint with the two panels and one
comparison PNG when several checkpoints are given.

The image count. The paper reports 99K interpolated images for CIFAR-100: 100 x 99 ordered pairs x
10 lambdas (step 0.1 with one end left out, as ``np.arange(0, 1, 0.1)`` gives). Here both ends are
kept, 11 lambdas (108,900 images at C = 100), so the curves are symmetric around lambda = 0.5:
``x(a, b, lambda) == x(b, a, 1 - lambda)``. The network sees each distinct image once: the C
unmixed images and the C(C-1)/2 unordered pairs at the 9 inner lambdas (44,650 forward passes at
C = 100); the ordered statistics follow from the symmetry (the difference changes sign).

The model is built from the checkpoint (timm's ``CheckpointSaver`` files, as ``train_icm.py`` writes
them, store the model name and the run's args) or from ``--model``/``--num-classes``/``--in-chans``;
the data configuration (input size, mean, std, the paper's CIFAR transform) from the run's
``args.yaml`` beside the checkpoint, else from the checkpoint's args, else from the flags
(which override both). The eval transform is used: no augmentation.
"""
import argparse
import csv
import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from . import files

__all__ = ['AnalysisError', 'Figure4', 'lambdas', 'load_model', 'run_config', 'eval_transform', 'create_eval_dataset',
           'select_images', 'pair_statistics', 'summarise', 'plot', 'main']

PROG = 'python -m timm_icm.analyze'
CSV_NAME = 'figure4.csv'
CSV_FIELDS = ('label', 'checkpoint', 'lambda', 'pairs', 'norm_mean', 'norm_std', 'norm_rel', 'diff_mean', 'diff_std')


class AnalysisError(Exception):
    """A problem with what was asked for: one line on stderr, exit code 2."""


def lambdas(steps: int = 11) -> torch.Tensor:
    """The interpolation ratios 0, 1/(steps-1), ..., 1 (float64; default step 0.1)."""
    if steps < 2:
        raise ValueError(f'lambda steps must be >= 2; got {steps}')
    return torch.arange(steps, dtype=torch.float64) / (steps - 1)


# ----------------------------------------------------------------------------- model and run config

def _load_checkpoint(path: str) -> Dict[str, Any]:
    try:
        return files.load_checkpoint(path, '--checkpoint')
    except files.FileProblem as e:
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        found = files.newest_checkpoint(folder, exclude=[path])
        if found is None and folder == path:
            folder = os.path.dirname(os.path.abspath(path))
            found = files.newest_checkpoint(folder, exclude=[path])
        way_out = (f'analyse {found[0]} (epoch {found[1]}), the newest checkpoint in {folder} that loads'
                   if found else None)
        raise AnalysisError(str(files.FileProblem(e.what, e.path, e.problem, way_out))) from None


def run_config(checkpoint_path: str, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The training run's flags: its ``args.yaml`` beside the checkpoint, else the checkpoint's args."""
    config: Dict[str, Any] = {}
    saved = checkpoint.get('args')
    if isinstance(saved, argparse.Namespace):
        config.update(vars(saved))
    elif isinstance(saved, dict):
        config.update(saved)
    args_yaml = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), 'args.yaml')
    if os.path.lexists(args_yaml):
        way_out = "repair or remove it (without it the checkpoint's own args are used)"
        try:
            loaded = files.load_yaml(args_yaml, "the run's args.yaml", way_out)
        except files.FileProblem as e:
            raise AnalysisError(str(e)) from None
        if not isinstance(loaded, dict):
            raise AnalysisError(f"the run's args.yaml {args_yaml}: holds a {type(loaded).__name__}, not the run's "
                                f"flags (a mapping); {way_out}")
        config.update(loaded)
    return config


def _state_dict(checkpoint: Dict[str, Any], use_ema: bool, path: str) -> Dict[str, torch.Tensor]:
    key = 'state_dict_ema' if use_ema else 'state_dict'
    if key not in checkpoint:
        if use_ema:
            raise AnalysisError(f'{path} holds no EMA weights (state_dict_ema); drop --use-ema')
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint  # a bare state dict
        raise AnalysisError(f'--checkpoint {path}: holds no state_dict: not a checkpoint of a model')
    state = checkpoint[key]
    if not isinstance(state, dict):
        raise AnalysisError(f'--checkpoint {path}: its {key} is a {type(state).__name__}, not the weights of a model')
    # Weights saved from DDP or torch.compile wrappers.
    return {re.sub(r'^(module\.|_orig_mod\.)+', '', k): v for k, v in state.items()}


def load_model(checkpoint_path: str, model_name: Optional[str] = None, num_classes: Optional[int] = None,
               in_chans: Optional[int] = None, use_ema: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
    """The trained model of a checkpoint (eval mode, on CPU) and its run configuration.

    ``model_name``/``num_classes``/``in_chans`` override what the checkpoint and ``args.yaml`` say;
    a model that does not fit the weights is an :class:`AnalysisError`.
    """
    import timm
    import timm_icm  # noqa: F401  (registers the CIFAR-style models)

    checkpoint = _load_checkpoint(checkpoint_path)
    config = run_config(checkpoint_path, checkpoint)
    trained_as = config.get('model') or (checkpoint.get('arch') if 'args' in checkpoint else None)
    name = model_name or trained_as
    if not name:
        raise AnalysisError(f'{checkpoint_path} does not name its model (no args/arch): pass --model')
    if model_name and trained_as and model_name != trained_as:
        raise AnalysisError(f'--model {model_name} does not match the checkpoint, trained as {trained_as}')
    state = _state_dict(checkpoint, use_ema, checkpoint_path)
    if num_classes is None:
        num_classes = config.get('num_classes')
    if in_chans is None:
        in_chans = config.get('in_chans') or (config['input_size'][0] if config.get('input_size') else None)
    kwargs = dict(config.get('model_kwargs') or {})
    if config.get('gp'):
        kwargs['global_pool'] = config['gp']
    if num_classes is not None:
        kwargs['num_classes'] = int(num_classes)
    if in_chans is not None:
        kwargs['in_chans'] = int(in_chans)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
        raise AnalysisError(' '.join(str(e).split())) from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise AnalysisError(f'{checkpoint_path} does not fit model {name}: {first}') from None
    problems = []
    if result.missing_keys:
        problems.append(f'missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[0]})')
    if result.unexpected_keys:
        problems.append(f'{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[0]})')
    if problems:
        raise AnalysisError(f'{checkpoint_path} does not fit model {name}: ' + ', '.join(problems))
    return model.eval(), config


# ----------------------------------------------------------------------------- data

def eval_transform(config: Dict[str, Any], model: nn.Module) -> Tuple[Callable, Dict[str, Any]]:
    """The evaluation transform of the run: timm's (``resolve_data_config``), or the paper's CIFAR one."""
    from timm.data import create_transform, resolve_data_config

    data_config = resolve_data_config(
        {k: config.get(k) for k in ('input_size', 'img_size', 'in_chans', 'mean', 'std', 'crop_pct',
                                    'crop_mode', 'interpolation') if config.get(k) not in (None, '')},
        model=model)
    if config.get('cifar_aug'):
        from .transforms import create_paper_cifar_transform
        transform = create_paper_cifar_transform(
            False, img_size=tuple(data_config['input_size'][-2:]), mean=data_config['mean'], std=data_config['std'])
    else:
        transform = create_transform(
            data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
            mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'],
            crop_mode=data_config.get('crop_mode'))
    return transform, data_config


def create_eval_dataset(name: str, data_dir: str, split: str, in_chans: int, transform: Callable) -> Dataset:
    """The evaluation split, read by :func:`timm_icm.datasets.create_dataset`, with ``transform``."""
    from .datasets import create_dataset
    from .transforms import set_transform

    if not data_dir or not os.path.exists(data_dir):
        raise AnalysisError(f'{name or "image folder"}: --data-dir {data_dir} does not exist')
    try:
        dataset = create_dataset(name, root=data_dir, split=split, is_training=False,
                                 input_img_mode='RGB' if in_chans == 3 else 'L')
    except AssertionError as e:  # timm's factory on a torch/... name it does not know
        raise AnalysisError(f'unknown dataset {name!r}: {" ".join(str(e).split())}') from None
    except (FileNotFoundError, files.FileProblem, ValueError, RuntimeError, TypeError) as e:
        message = ' '.join(str(e).split()) or f'cannot read dataset {name!r}'
        if 'Found 0' in message and name:  # timm reads a name without a known prefix as an image folder
            message = f'unknown dataset {name!r} (read as an image folder: {message})'
        raise AnalysisError(message) from None
    set_transform(dataset, transform)
    return dataset


def select_images(targets: torch.Tensor, num_classes: int, seed: int = 0) -> List[int]:
    """One index per class, drawn uniformly among that class's images (reproducible by ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(targets == c).flatten()
        if len(members) == 0:
            raise AnalysisError(f'class {c} has no image in this split: pick a split that holds every class')
        chosen.append(int(members[torch.randint(len(members), (1,), generator=gen)]))
    return chosen


# ----------------------------------------------------------------------------- the analysis

@torch.no_grad()
def _features_and_logits(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    features = model.forward_features(x)
    pre_logits = model.forward_head(features, pre_logits=True)
    logits = model.forward_head(features)
    return pre_logits.flatten(1).double(), logits.double()


def pair_statistics(model: nn.Module, images: torch.Tensor, steps: int = 11, batch_size: int = 256,
                    device: Optional[torch.device] = None, progress: bool = True) -> Dict[str, torch.Tensor]:
    """Squared feature norms and class-score differences of all mixed pairs (Sec. 4.3).

    Args:
        model: a timm classifier (``forward_features`` / ``forward_head(pre_logits=...)``), eval mode.
        images: ``[C, ...]``, image ``c`` of class ``c``, transformed and normalised.
        steps: lambdas 0, 1/(steps-1), ..., 1.

    Returns ``lambdas`` ``[K]``, and ``norm``, ``diff`` of shape ``[C(C-1), K]`` over the ordered
    pairs (a, b), a != b (row order: a major, b minor): the squared norm of the penultimate features
    of ``lambda * x_a + (1 - lambda) * x_b``, and its logit of class a minus its logit of class b.
    """
    device = device or torch.device('cpu')
    model = model.to(device).eval()
    num_classes = images.shape[0]
    lams = lambdas(steps)
    images = images.to(device, torch.float32)
    single_feat, single_logits = _features_and_logits(model, images)
    single_norm = single_feat.pow(2).sum(1)

    a_idx, b_idx = torch.triu_indices(num_classes, num_classes, offset=1)  # unordered pairs, a < b
    num_pairs, inner = len(a_idx), steps - 2
    norm_u = torch.empty(num_pairs, steps, dtype=torch.float64)
    diff_u = torch.empty(num_pairs, steps, dtype=torch.float64)
    # lambda = 0 is x_b, lambda = 1 is x_a: the unmixed images.
    norm_u[:, 0], norm_u[:, -1] = single_norm[b_idx].cpu(), single_norm[a_idx].cpu()
    diff_u[:, 0] = (single_logits[b_idx, a_idx] - single_logits[b_idx, b_idx]).cpu()
    diff_u[:, -1] = (single_logits[a_idx, a_idx] - single_logits[a_idx, b_idx]).cpu()

    total = num_pairs * inner
    pair_of = torch.arange(total) // inner
    lam_of = torch.arange(total) % inner + 1
    bar = _progress(total, progress)
    for start in range(0, total, batch_size):
        p, k = pair_of[start:start + batch_size], lam_of[start:start + batch_size]
        a, b = a_idx[p].to(device), b_idx[p].to(device)
        lam = lams[k].to(device, torch.float32).view(-1, *([1] * (images.dim() - 1)))
        x = lam * images[a] + (1 - lam) * images[b]
        feat, logits = _features_and_logits(model, x)
        rows = torch.arange(len(p), device=device)
        norm_u[p, k] = feat.pow(2).sum(1).cpu()
        diff_u[p, k] = (logits[rows, a] - logits[rows, b]).cpu()
        if bar is not None:
            bar.update(len(p))
    if bar is not None:
        bar.close()

    # Ordered pairs: (a, b) with a < b directly; (b, a) at lambda is (a, b) at 1 - lambda, sign flipped.
    order = torch.full((num_classes, num_classes), -1, dtype=torch.long)
    order[a_idx, b_idx] = torch.arange(num_pairs)
    order[b_idx, a_idx] = torch.arange(num_pairs)
    first, second = torch.nonzero(~torch.eye(num_classes, dtype=torch.bool), as_tuple=True)
    rows = order[first, second]
    flipped = (first > second).unsqueeze(1)
    norm = torch.where(flipped, norm_u[rows].flip(1), norm_u[rows])
    diff = torch.where(flipped, -diff_u[rows].flip(1), diff_u[rows])
    return dict(lambdas=lams, norm=norm, diff=diff, pairs=torch.stack((first, second), 1))


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc='mixed images', unit='img', leave=False, file=sys.stderr)


def summarise(stats: Dict[str, torch.Tensor]) -> List[Dict[str, float]]:
    """Per lambda: the number of ordered pairs, mean/std of the squared norm, the norm relative to the unmixed images,
    mean/std of the difference (population std over the ordered pairs)."""
    norm, diff = stats['norm'], stats['diff']
    unmixed = 0.5 * (norm[:, 0].mean() + norm[:, -1].mean())
    rows = []
    for k, lam in enumerate(stats['lambdas'].tolist()):
        rows.append(dict(
            **{'lambda': round(lam, 6)}, pairs=norm.shape[0],
            norm_mean=norm[:, k].mean().item(), norm_std=norm[:, k].std(unbiased=False).item(),
            norm_rel=(norm[:, k].mean() / unmixed).item(),
            diff_mean=diff[:, k].mean().item(), diff_std=diff[:, k].std(unbiased=False).item()))
    return rows


# ----------------------------------------------------------------------------- plots

def _safe(label: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_') or 'model'


def plot(results: Sequence[Tuple[str, List[Dict[str, float]]]], output: str) -> List[str]:
    """One two-panel PNG per checkpoint and, for several, a comparison PNG. Needs matplotlib."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    written = []

    def panels(ax_norm, ax_diff, label, rows, relative, color=None):
        lam = [r['lambda'] for r in rows]
        ax_norm.plot(lam, [r['norm_rel' if relative else 'norm_mean'] for r in rows], 'o-', ms=3, label=label,
                     color=color)
        mean = [r['diff_mean'] for r in rows]
        std = [r['diff_std'] for r in rows]
        line, = ax_diff.plot(lam, mean, 'o-', ms=3, label=label, color=color)
        ax_diff.fill_between(lam, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                             color=line.get_color(), alpha=0.2, linewidth=0)

    def finish(fig, ax_norm, ax_diff, relative, title, path):
        ax_norm.set_xlabel(r'$\lambda$ (weight of image $a$)')
        ax_norm.set_ylabel('squared feature norm / unmixed' if relative else 'mean squared feature norm')
        ax_norm.set_title('confidence')
        ax_diff.set_xlabel(r'$\lambda$ (weight of image $a$)')
        ax_diff.set_ylabel('logit$_a$ - logit$_b$ (mean $\\pm$ std)')
        ax_diff.set_title('class-confidence difference')
        ax_diff.axhline(0, color='0.6', lw=0.8)
        for ax in (ax_norm, ax_diff):
            ax.grid(alpha=0.3)
        ax_diff.legend(fontsize=8, loc='upper left')
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    for label, rows in results:
        fig, (ax_norm, ax_diff) = plt.subplots(1, 2, figsize=(8, 3.2))
        panels(ax_norm, ax_diff, label, rows, relative=False)
        finish(fig, ax_norm, ax_diff, False, f'{label}: Figure 4 analysis ({rows[0]["pairs"]} ordered pairs)',
               os.path.join(output, f'figure4_{_safe(label)}.png'))
    if len(results) > 1:
        fig, (ax_norm, ax_diff) = plt.subplots(1, 2, figsize=(8, 3.2))
        for label, rows in results:
            panels(ax_norm, ax_diff, label, rows, relative=True)
        ax_norm.legend(fontsize=8)
        finish(fig, ax_norm, ax_diff, True, 'Figure 4 analysis: ' + ' vs '.join(label for label, _ in results),
               os.path.join(output, 'figure4_comparison.png'))
    return written


# ----------------------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def create_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split('\n')[0], allow_abbrev=False)
    parser.add_argument('--checkpoint', action='append', required=True, metavar='PATH',
                        help='a checkpoint of train_icm.py / timm train.py (repeat to compare several)')
    parser.add_argument('--label', action='append', default=[], metavar='NAME',
                        help='a name per checkpoint for the CSV and the plots (default: the run folder name)')
    parser.add_argument('--dataset', default=None, metavar='NAME',
                        help='dataset name as for train_icm.py, e.g. torch/fashion_mnist, torch/cifar100 '
                             '(default: the run\'s)')
    parser.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root (default: the run\'s)')
    parser.add_argument('--split', default=None, metavar='NAME',
                        help='split to draw the test images from (default: the run\'s --val-split, else validation)')
    parser.add_argument('--output', required=True, metavar='DIR', help='folder for the CSV and PNGs')
    parser.add_argument('--model', default=None, metavar='MODEL', help='model name (default: the checkpoint\'s)')
    parser.add_argument('--num-classes', type=int, default=None, metavar='N')
    parser.add_argument('--in-chans', type=int, default=None, metavar='N')
    parser.add_argument('--input-size', type=int, nargs=3, default=None, metavar='N')
    parser.add_argument('--img-size', type=int, default=None, metavar='N')
    parser.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    parser.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    parser.add_argument('--use-ema', action='store_true', default=False, help='analyse the EMA weights')
    parser.add_argument('--seed', type=int, default=0, help='seed of the choice of one test image per class')
    parser.add_argument('--lambda-steps', type=int, default=11, metavar='K',
                        help='number of lambdas from 0 to 1 (default: 11, step 0.1)')
    parser.add_argument('-b', '--batch-size', type=int, default=256, metavar='N')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--no-plot', action='store_true', default=False, help='write the CSV only')
    parser.add_argument('--no-progress', action='store_true', default=False)
    return parser


def _run_label(path: str, config: Dict[str, Any]) -> str:
    return config.get('experiment') or os.path.basename(os.path.dirname(os.path.abspath(path))) or 'model'


class Figure4:
    """One checkpoint to analyse: its model, run configuration (flags over ``args.yaml``), eval transform, data."""

    def __init__(self, checkpoint: str, flags: argparse.Namespace) -> None:
        self.checkpoint = checkpoint
        self.model, config = load_model(checkpoint, flags.model, flags.num_classes, flags.in_chans, flags.use_ema)
        if flags.img_size is not None and flags.input_size is None:
            config.pop('input_size', None)  # timm's resolve_data_config prefers input_size over img_size
        for key in ('input_size', 'img_size', 'mean', 'std'):
            if getattr(flags, key) is not None:
                config[key] = getattr(flags, key)
        if flags.in_chans is not None:
            config['in_chans'] = flags.in_chans
        self.config = config
        self.transform, self.data_config = eval_transform(config, self.model)
        self.dataset_name = flags.dataset if flags.dataset is not None else config.get('dataset', '')
        self.data_dir = flags.data_dir or config.get('data_dir') or config.get('data')
        self.split = flags.split or config.get('val_split') or 'validation'
        self.num_classes = self.model.num_classes


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m timm_icm.analyze --checkpoint A [--checkpoint B ...] --dataset NAME --data-dir DIR --output DIR``."""
    flags = create_parser().parse_args(argv)
    try:
        return _main(flags)
    except (AnalysisError, files.FileProblem) as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 2


def _main(flags: argparse.Namespace) -> int:
    from .datasets import dataset_targets

    if flags.label and len(flags.label) != len(flags.checkpoint):
        raise AnalysisError(f'give one --label per --checkpoint ({len(flags.checkpoint)}); got {len(flags.label)}')
    if flags.lambda_steps < 2:
        raise AnalysisError(f'--lambda-steps must be >= 2; got {flags.lambda_steps}')
    device = torch.device(flags.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    runs = [Figure4(path, flags) for path in flags.checkpoint]  # all errors before any long computation
    labels = flags.label or [_run_label(r.checkpoint, r.config) for r in runs]
    if len(set(labels)) != len(labels):
        labels = [f'{label}_{i}' for i, label in enumerate(labels)]
    try:
        os.makedirs(flags.output, exist_ok=True)
    except OSError as e:
        raise AnalysisError(f'--output {flags.output}: cannot create the folder ({e.strerror or e})') from None

    results, meta, cache = [], [], {}
    for run, label in zip(runs, labels):
        in_chans = run.data_config['input_size'][0]
        key = (run.dataset_name, run.data_dir, run.split, in_chans, repr(run.transform))
        if key not in cache:
            dataset = create_eval_dataset(run.dataset_name, run.data_dir, run.split, in_chans, run.transform)
            try:
                targets = dataset_targets(dataset)
            except TypeError as e:
                raise AnalysisError(str(e)) from None
            if int(targets.max()) >= run.num_classes:
                raise AnalysisError(f'{run.dataset_name} has {int(targets.max()) + 1} classes but the model '
                                    f'of {run.checkpoint} has {run.num_classes} outputs')
            chosen = select_images(targets, run.num_classes, flags.seed)
            images = torch.stack([dataset[i][0] for i in chosen])
            cache[key] = chosen, images
        chosen, images = cache[key]
        print(f'{label}: {run.num_classes} classes, {run.num_classes * (run.num_classes - 1)} ordered pairs x '
              f'{flags.lambda_steps} lambdas ({run.checkpoint})', flush=True)
        stats = pair_statistics(run.model, images, flags.lambda_steps, flags.batch_size, device,
                                progress=not flags.no_progress)
        rows = summarise(stats)
        results.append((label, rows))
        meta.append(dict(label=label, checkpoint=run.checkpoint, model=run.config.get('model'),
                         dataset=run.dataset_name, split=run.split, image_indices=chosen,
                         input_size=list(run.data_config['input_size']), mean=list(run.data_config['mean']),
                         std=list(run.data_config['std']), seed=flags.seed))

    csv_path = os.path.join(flags.output, CSV_NAME)
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for (label, rows), info in zip(results, meta):
            for row in rows:
                writer.writerow({'label': label, 'checkpoint': info['checkpoint'], **{
                    k: (f'{v:.8g}' if isinstance(v, float) else v) for k, v in row.items()}})
    with open(os.path.join(flags.output, 'figure4.json'), 'w') as f:
        json.dump(dict(runs=meta, lambdas=[r['lambda'] for r in results[0][1]],
                       confidence='squared L2 norm of model.forward_head(model.forward_features(x), pre_logits=True)',
                       difference='logit of class a minus logit of class b, x = lambda * x_a + (1 - lambda) * x_b'),
                  f, indent=1)
    print(f'wrote {csv_path}')
    if not flags.no_plot:
        try:
            written = plot(results, flags.output)
        except ImportError:
            print('matplotlib is not installed (pip install "timm-icm[plot]"): CSV only', file=sys.stderr)
        else:
            for path in written:
                print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
