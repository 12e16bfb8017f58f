#!/usr/bin/env python3
"""A stand-in for timm's ``train.py`` (timm 1.0.x), for the tests of ``timm_icm.launch``.

Written here, in the import style and with the flag names of timm's script, so that the launcher
is tested against what it meets there: ``Mixup`` / ``FastCollateMixup`` / ``create_dataset`` /
``create_loader`` imported from ``timm.data``, ``SoftTargetCrossEntropy`` from ``timm.loss``, the
loss chosen as timm chooses it, the prefetcher path, ``--mixup-off-epoch``, ``torchrun``. It trains
a few real steps and writes what the tests check to ``--summary`` (JSON, rank 0).

Variants that build the loss some other way (``--standin-loss``): ``own`` computes a soft-target
cross-entropy inline without creating ``SoftTargetCrossEntropy``; ``unused`` creates it but trains
with the inline one. ``--task`` trains through ``timm.task.ClassificationTask`` as timm's newest
script does (older 1.0.x scripts call the loss directly). ``--swallow-errors`` catches every
``Exception`` of a training step and carries on.
"""
import argparse
import json
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from timm import utils
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import create_model

_logger = logging.getLogger('train')

config_parser = parser = argparse.ArgumentParser(description='Training Config', add_help=False)
parser.add_argument('-c', '--config', default='', type=str, metavar='FILE')

parser = argparse.ArgumentParser(description='timm train.py stand-in')
parser.add_argument('data', nargs='?', metavar='DIR', const=None)
parser.add_argument('--data-dir', metavar='DIR')
parser.add_argument('--dataset', metavar='NAME', default='')
parser.add_argument('--train-split', metavar='NAME', default='train')
parser.add_argument('--model', default='resnet20_cifar', type=str)
parser.add_argument('--num-classes', type=int, default=None)
parser.add_argument('--img-size', type=int, default=16)
parser.add_argument('--in-chans', type=int, default=3)
parser.add_argument('--mean', type=float, nargs='+', default=[0.5, 0.5, 0.5])
parser.add_argument('--std', type=float, nargs='+', default=[0.25, 0.25, 0.25])
parser.add_argument('-b', '--batch-size', type=int, default=8)
parser.add_argument('--device', default='cpu', type=str)
parser.add_argument('--lr', type=float, default=0.05)
parser.add_argument('--epochs', type=int, default=2)
parser.add_argument('--steps-per-epoch', type=int, default=2)
parser.add_argument('--bce-loss', action='store_true', default=False)
parser.add_argument('--mixup', type=float, default=0.0)
parser.add_argument('--cutmix', type=float, default=0.0)
parser.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
parser.add_argument('--mixup-prob', type=float, default=1.0)
parser.add_argument('--mixup-switch-prob', type=float, default=0.5)
parser.add_argument('--mixup-mode', type=str, default='batch')
parser.add_argument('--mixup-off-epoch', default=0, type=int)
parser.add_argument('--smoothing', type=float, default=0.1)
parser.add_argument('--seed', type=int, default=42)
parser.add_argument('-j', '--workers', type=int, default=0)
parser.add_argument('--no-prefetcher', action='store_true', default=False)
parser.add_argument('--task', action='store_true', default=False)
parser.add_argument('--standin-loss', default='timm', choices=('timm', 'own', 'unused'))
parser.add_argument('--swallow-errors', action='store_true', default=False)
parser.add_argument('--summary', default='', type=str, metavar='PATH')


def _parse_args():
    args_config, remaining = config_parser.parse_known_args()
    if args_config.config:
        with open(args_config.config) as f:
            parser.set_defaults(**yaml.safe_load(f))
    return parser.parse_args(remaining)


def own_soft_target_loss(logits, target):
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def mixed_fraction(target):
    """Share of target rows with two or more classes above the row's floor (RegMixup: the mixed half)."""
    if target.dim() == 1:
        return 0.0
    rows = target[-1] if target.dim() == 3 else target
    above = rows > rows.amin(dim=1, keepdim=True)
    return (above.sum(dim=1) > 1).float().mean().item()


def main():
    utils.setup_default_logging()
    args = _parse_args()
    args.prefetcher = not args.no_prefetcher
    if args.data and not args.data_dir:
        args.data_dir = args.data
    device = utils.init_distributed_device(args)
    utils.random_seed(args.seed, args.rank)

    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    model.to(device)

    dataset_train = create_dataset(
        args.dataset, root=args.data_dir, split=args.train_split, is_training=True,
        batch_size=args.batch_size, seed=args.seed, input_img_mode='RGB' if args.in_chans == 3 else 'L')

    mixup_fn = None
    collate_fn = None
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    if mixup_active:
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=args.num_classes)
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)

    loader_train = create_loader(
        dataset_train, input_size=(args.in_chans, args.img_size, args.img_size), batch_size=args.batch_size,
        is_training=True, no_aug=True, use_prefetcher=args.prefetcher, mean=args.mean, std=args.std,
        num_workers=args.workers, distributed=args.distributed, collate_fn=collate_fn, device=device)

    if args.standin_loss == 'own':
        train_loss_fn = own_soft_target_loss
    elif args.standin_loss == 'unused':
        SoftTargetCrossEntropy()
        train_loss_fn = own_soft_target_loss
    elif mixup_active:
        train_loss_fn = BinaryCrossEntropy(target_threshold=0.2) if args.bce_loss else SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()

    if args.distributed:
        model = nn.parallel.DistributedDataParallel(model)
    task = None
    if args.task:
        from timm.task import ClassificationTask
        task = ClassificationTask(model=model, criterion=train_loss_fn, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    epochs = []
    for epoch in range(args.epochs):
        if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            if args.prefetcher and loader_train.mixup_enabled:
                loader_train.mixup_enabled = False
            elif mixup_fn is not None:
                mixup_fn.mixup_enabled = False
        if args.distributed:
            loader_train.sampler.set_epoch(epoch)
        model.train()
        record = dict(epoch=epoch, losses=[], mixed_fraction=[], target_shape=None)
        for batch_idx, (input, target) in enumerate(loader_train):
            if batch_idx >= args.steps_per_epoch:
                break
            try:
                if not args.prefetcher:
                    input, target = input.to(device), target.to(device)
                    if mixup_fn is not None:
                        input, target = mixup_fn(input, target)
                if task is not None:
                    loss = task(input, target)['loss']
                else:
                    loss = train_loss_fn(model(input), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            except Exception as e:
                if not args.swallow_errors:
                    raise
                _logger.warning(f'step failed, carrying on: {e}')
                continue
            record['losses'].append(loss.item())
            record['mixed_fraction'].append(mixed_fraction(target))
            record['target_shape'] = list(target.shape)
        epochs.append(record)
        if utils.is_primary(args):
            _logger.info(f'Train: {epoch} loss: {record["losses"][-1] if record["losses"] else float("nan"):.4f}')

    if args.summary and utils.is_primary(args):
        mixers = [m for m in (mixup_fn, collate_fn) if m is not None]
        mixer = mixers[0] if mixers else None
        summary = dict(
            loss_class=_name(train_loss_fn), loss_repr=repr(train_loss_fn),
            mixer_class=_name(mixer), mixer_mro=[c.__name__ for c in type(mixer).__mro__] if mixer else [],
            mixer_regmixup=getattr(mixer, 'regmixup', None),
            mixer_remix=getattr(mixer, 'remix', None),
            class_counts=[int(c) for c in mixer.class_counts.tolist()] if getattr(mixer, 'class_counts', None)
            is not None else None,
            world_size=args.world_size, epochs=epochs,
            final_loss=epochs[-1]['losses'][-1] if epochs and epochs[-1]['losses'] else None)
        with open(args.summary, 'w') as f:
            json.dump(summary, f, indent=1)


def _name(obj):
    if obj is None:
        return None
    return getattr(obj, '__name__', None) if not isinstance(obj, nn.Module) and hasattr(obj, '__name__') \
        else type(obj).__name__


if __name__ == '__main__':
    main()
