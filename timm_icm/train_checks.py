"""What train_icm.py checks before any training step, each problem a :class:`UsageError` (one line, exit 2).

The data's labels against ``--num-classes``, one training image against the model's channels and input
size, ``--initial-checkpoint`` and ``--resume`` as files and against the run (model, class count,
optimizer, ICM options, weights that fit).
"""
import argparse
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from timm.models import clean_state_dict

from . import cli, datasets, files
from .random_state import random_states, set_random_states


class UsageError(Exception):
    """A problem with what the user asked for: one line on stderr, exit code 2."""


def input_channels(args: argparse.Namespace) -> int:
    return args.in_chans or (args.input_size[0] if args.input_size else 3)


def initial_checkpoint_weights(args: argparse.Namespace) -> Optional[Dict[str, torch.Tensor]]:
    """The weights of --initial-checkpoint as timm's ``load_checkpoint`` picks them (EMA first), checked as a file.

    None for formats timm reads by other means (safetensors, numpy).
    """
    path = args.initial_checkpoint
    if not path:
        return None
    if path.lower().endswith(('.safetensors', '.npz', '.npy')):
        files.check_file(path, '--initial-checkpoint')
        return None
    checkpoint = files.load_checkpoint(path, '--initial-checkpoint')
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            return clean_state_dict(checkpoint[key])
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return clean_state_dict(checkpoint)
    raise UsageError(f'--initial-checkpoint {path}: holds no model weights (no state_dict, and not a state dict '
                     f'itself): not a checkpoint of a model')


# The settings a resumed run must share with the run that wrote its checkpoint: the model and its
# outputs, every option of the ICM flag group (they change the loss being optimised), and the optimizer
# whose state it restores (unless --no-resume-opt).
def _resume_settings(args: argparse.Namespace) -> Tuple[str, ...]:
    parser = argparse.ArgumentParser(add_help=False)
    cli.add_icm_args(parser)
    optimizer = () if args.no_resume_opt else ('opt',)
    return ('model', 'num_classes', 'in_chans') + optimizer + tuple(vars(parser.parse_args([])))


def _resume_way_out(path: str) -> str:
    """Where a user whose --resume file is broken can go on: the newest checkpoint of that run that loads."""
    folder = os.path.dirname(os.path.abspath(path))
    found = files.newest_checkpoint(path, exclude=[path]) if os.path.isdir(path) else None
    if found is not None:  # a run folder given as --resume: its own checkpoints
        folder = path
    else:
        found = files.newest_checkpoint(folder, exclude=[path])
    if found is None:
        return f'no checkpoint in {folder} loads: start the run again without --resume'
    return f'resume from {found[0]} (epoch {found[1]}), the newest checkpoint in {folder} that loads'


def check_resume_checkpoint(args: argparse.Namespace, model: nn.Module) -> None:
    """The --resume checkpoint, checked before anything trains: a file that loads, written by a run with the
    same model, class count, optimizer and ICM options (its ``args``), holding weights that fit the model.

    Only checked: timm's ``resume_task_checkpoint`` reads it again once the optimizer exists.
    """
    path = args.resume
    try:
        checkpoint = files.load_checkpoint(path, '--resume')
    except files.FileProblem as e:
        raise UsageError(str(files.FileProblem(e.what, e.path, e.problem, _resume_way_out(path)))) from None
    saved = checkpoint.get('args')
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved if isinstance(saved, dict) else None
    run_args = os.path.join(os.path.dirname(os.path.abspath(path)), 'args.yaml')
    own = f'resume with the settings of that run (-c {run_args})' if os.path.isfile(run_args) else \
        'resume with the settings of the run that wrote it'
    if saved is not None:
        differences = []
        for dest in _resume_settings(args):
            if dest not in saved and dest != 'in_chans':
                continue
            then = input_channels(argparse.Namespace(in_chans=saved.get('in_chans'),
                                                     input_size=saved.get('input_size'))) \
                if dest == 'in_chans' else saved[dest]
            now = input_channels(args) if dest == 'in_chans' else getattr(args, dest)
            if then != now:
                differences.append(f'--{dest.replace("_", "-")} {_shown(now)} (checkpoint: {_shown(then)})')
        if differences:
            raise UsageError(f'--resume {path}: this run differs from the one that wrote the checkpoint: '
                             f'{", ".join(differences)}; {own}, or start a new run without --resume')
    state = checkpoint.get('state_dict', checkpoint.get('model'))
    if not isinstance(state, dict):
        raise UsageError(f'--resume {path}: holds no model weights (no state_dict): not a training checkpoint; '
                         f'{_resume_way_out(path)}')
    mismatch = files.state_dict_mismatch(model.state_dict(), clean_state_dict(state))
    if mismatch:
        raise UsageError(f'--resume {path}: its weights do not fit {args.model} with {args.num_classes} classes: '
                         f'{mismatch}; {own}, or start a new run without --resume')


def _shown(value) -> str:
    if isinstance(value, bool):
        return 'on' if value else 'off'
    return f'{value:g}' if isinstance(value, float) else str(value)


def check_labels(args: argparse.Namespace, **named_sets) -> None:
    """Every class label of the data sets must be an output of the model (--num-classes)."""
    for name, dataset in named_sets.items():
        if dataset is None:
            continue
        try:
            targets = datasets.dataset_targets(dataset)
        except TypeError:  # labels that cannot be read without loading the images: the loss checks them
            continue
        if len(targets) == 0:
            continue
        low, high = int(targets.min()), int(targets.max())
        where = f'the {name} set of {args.dataset or args.data_dir}'
        if low < 0:
            raise UsageError(f'{where} holds a negative class label ({low}): labels must be 0 ... C-1')
        if high >= args.num_classes:
            model = f'--num-classes {args.num_classes}' if args.num_classes_given else \
                f'{args.model} has {args.num_classes} outputs (its default; no --num-classes)'
            raise UsageError(f'{model}, but {where} holds class labels up to {high}: set --num-classes {high + 1}')


def check_input(args: argparse.Namespace, model: nn.Module, dataset, data_config, device) -> None:
    """One training image, through its transform and the model (eval mode, no gradient), before any step:
    the image's channels against --in-chans, its size against the model.

    The random state is left as it was, so that a run draws exactly what it would draw without this check.
    Streamed data sets (``IterableDataset``) have no first image to look at: the first batch checks them.
    """
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, '__getitem__'):
        return
    states = random_states()
    try:
        sample = dataset[0][0]
    except Exception as e:
        raise UsageError(f'the first training image cannot be loaded: {" ".join(str(e).split())[:300]}') from None
    finally:
        set_random_states(states)
    x = sample if isinstance(sample, torch.Tensor) else torch.as_tensor(np.asarray(sample))
    x = x.unsqueeze(0) if x.ndim == 2 else x
    channels = input_channels(args)
    if x.ndim != 3 or x.shape[0] != channels:
        mode = args.input_img_mode or ('RGB' if channels == 3 else 'L')
        raise UsageError(f'the training images reach the model as {list(x.shape)} (channels, height, width; image '
                         f'mode {mode}) but the model takes {channels} channel(s) (--in-chans / --input-size): '
                         f'set --input-img-mode to a mode with {channels} channel(s), or --in-chans {x.shape[0]}')
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x.unsqueeze(0).float().to(device))
    except Exception as e:
        raise UsageError(f'{args.model} cannot take the training images, {list(x.shape)} after the transform '
                         f'(--input-size / --img-size): {" ".join(str(e).split())[:300]}') from None
    finally:
        model.train(training)
