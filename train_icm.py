#!/usr/bin/env python3
"""Train any timm model with Infinite Class Mixup (Mensink & Mettes, BMVC 2023).

timm's ``train.py`` command line (same flags, same ``-c/--config`` YAML, same output folder with
``args.yaml``, ``summary.csv`` and checkpoints, same ``torchrun`` launch) plus ICM's flags:

    python train_icm.py -c hparams/cifar100_resnet34.yaml -c hparams/methods/icmixup.yaml --data-dir ~/data
    torchrun --nproc_per_node 4 train_icm.py ... --icm --icm-gather

Everything is timm's library and ``timm_icm``; this file only wires them together.
"""
import argparse
import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from typing import Dict, Optional

import torch
import torch.nn as nn
from timm import utils
from timm.data import create_loader, resolve_data_config
from timm.models import create_model, load_checkpoint, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import load_task_ema_checkpoint, resume_task_checkpoint

import timm_icm  # noqa: F401  (registers the CIFAR-style models)
from timm_icm import cli, datasets, files, subsets, transforms
from timm_icm.run_files import RunCheckpointSaver, append_summary, trim_summary
from timm_icm.train_checks import (UsageError, check_input, check_labels, check_resume_checkpoint,
                                   initial_checkpoint_weights, input_channels)
from timm_icm.distributed import release_process_group
from timm_icm.factory import create_mixer, create_train_loss
from timm_icm.metrics import ClassificationMeter
from timm_icm.random_state import ResumableClassificationTask

_logger = logging.getLogger('train_icm')


EVAL_KEYS = ('loss', 'top1', 'top5', 'ece')


def build_model(args: argparse.Namespace) -> nn.Module:
    in_chans = input_channels(args)
    initial = initial_checkpoint_weights(args)
    try:
        model = create_model(
            args.model, pretrained=args.pretrained, in_chans=in_chans, num_classes=args.num_classes,
            drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
            global_pool=args.gp, bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, **args.model_kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise UsageError(f'{e} (CIFAR-style models of timm_icm: {", ".join(timm_icm.models.CIFAR_MODEL_NAMES)})')
        raise
    if args.num_classes is None:
        args.num_classes = model.num_classes
    if args.initial_checkpoint:
        if initial is not None:  # the weights must fit before timm loads them (strictly, as create_model does)
            mismatch = files.state_dict_mismatch(model.state_dict(), initial)
            if mismatch:
                raise UsageError(f'--initial-checkpoint {args.initial_checkpoint}: its weights do not fit {args.model} '
                                 f'with {args.num_classes} classes and {in_chans} input channel(s): {mismatch}')
        load_checkpoint(model, args.initial_checkpoint)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def build_datasets(args: argparse.Namespace):
    """Train and eval datasets, the training subset of the paper's data settings, its class counts."""
    if not args.data_dir:
        raise UsageError('no data: set --data-dir DIR (and --dataset NAME; e.g. torch/cifar100, or a folder of '
                         'class sub-folders with --dataset empty)')
    if not os.path.exists(args.data_dir) and not args.dataset_download:
        raise UsageError(f'{args.dataset or "image folder"}: --data-dir {args.data_dir} does not exist')
    if args.class_map and args.dataset.lower() not in datasets.DATASET_NAMES:
        files.check_file(args.class_map, '--class-map')
    img_mode = args.input_img_mode or ('RGB' if input_channels(args) == 3 else 'L')
    common = dict(root=args.data_dir, class_map=args.class_map, download=args.dataset_download,
                  batch_size=args.batch_size, input_img_mode=img_mode)
    try:
        train = datasets.create_dataset(args.dataset, split=args.train_split, is_training=True, seed=args.seed,
                                        **common)
        evaluation = datasets.create_dataset(args.dataset, split=args.val_split, **common) if args.val_split else None
    except FileNotFoundError as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else f'data not found: {args.data_dir}') from None
    except (files.FileProblem, datasets.DataError) as e:  # a broken data file, a split the data set lacks
        raise UsageError(str(e)) from None
    except RuntimeError as e:  # timm's folder reader finding no images
        if 'Found 0' not in str(e):
            raise
        raise UsageError(' '.join(str(e).split())) from None
    check_labels(args, training=train, evaluation=evaluation)
    if evaluation is not None and args.eval_samples_per_class:
        evaluation, _ = subsets.subset_dataset(
            evaluation, samples_per_class=args.eval_samples_per_class, seed=args.subset_seed)
    setting = dict(fraction=args.train_fraction, samples_per_class=args.train_samples_per_class,
                   imbalance_ratio=args.imbalance_ratio)
    wants_subset = any(v is not None for v in setting.values())
    try:
        if wants_subset:
            train, counts = subsets.subset_dataset(train, seed=args.subset_seed, **setting)
        else:
            counts = subsets.class_counts(datasets.dataset_targets(train))
    except (TypeError, ValueError) as e:
        if wants_subset or args.remix or args.logit_adjust:  # these need the training labels
            raise UsageError(f'{args.dataset or "this dataset"} gives no class counts: {e}') from None
        counts = None
    if counts is not None and len(counts) < args.num_classes:  # classes the model has but the data lacks
        counts = torch.cat([counts, counts.new_zeros(args.num_classes - len(counts))])
    return train, evaluation, counts


def build_loaders(args, data_config, dataset_train, dataset_eval, collate_fn, device):
    common = dict(mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
                  distributed=args.distributed, pin_memory=args.pin_mem, device=device,
                  use_prefetcher=args.prefetcher)
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa, num_aug_repeats=args.aug_repeats,
        interpolation=args.train_interpolation or data_config['interpolation'], collate_fn=collate_fn,
        worker_seeding=args.worker_seeding,
        # Workers must see the collate mixer switched off at --mixup-off-epoch: no persistent copies.
        persistent_workers=not (args.mixup_off_epoch and collate_fn is not None), **common)
    if args.keep_last_batch:  # timm's PrefetchLoader wraps torch's DataLoader; its batch sampler decides
        getattr(loader_train, 'loader', loader_train).batch_sampler.drop_last = False
    loader_eval = None
    if dataset_eval is not None:
        loader_eval = create_loader(
            dataset_eval, input_size=data_config['input_size'],
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'], **common)
    if args.cifar_aug:
        size = data_config['input_size'][-1]
        for loader, training in ((loader_train, True), (loader_eval, False)):
            if loader is not None:
                transforms.set_transform(loader, transforms.create_paper_cifar_transform(
                    training, img_size=size, mean=data_config['mean'], std=data_config['std'],
                    use_prefetcher=args.prefetcher))
    return loader_train, loader_eval


def train_one_epoch(epoch, task, loader, optimizer, args, device, lr_scheduler, amp_autocast, loss_scaler,
                    mixup_fn, num_updates) -> Dict[str, float]:
    task.train()
    model = task.get_trainable_module()
    accum = args.grad_accum_steps
    loss_sum, loss_count = torch.zeros((), device=device), 0
    start = time.time()
    optimizer.zero_grad()
    num_batches = len(loader)
    for batch_idx, (input, target) in enumerate(loader):
        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        last_micro = (batch_idx + 1) % accum == 0 or batch_idx + 1 == num_batches
        with (nullcontext() if last_micro else task.no_sync()):
            with amp_autocast():
                loss = task(input, target)['loss']
            if loss_scaler is not None:
                loss_scaler(loss / accum, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=model.parameters(), need_update=last_micro)
            else:
                (loss / accum).backward()
                if last_micro:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(model.parameters(), value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
        loss_sum += loss.detach() * input.shape[0]
        loss_count += input.shape[0]
        if not last_micro:
            continue
        optimizer.zero_grad()
        task.update_ema(step=num_updates)
        num_updates += 1
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
        if utils.is_primary(args) and (batch_idx + 1) // accum % args.log_interval == 0:
            lr = optimizer.param_groups[0]['lr']
            _logger.info(f'Train: {epoch} [{batch_idx + 1:>4d}/{num_batches}] loss: {loss.item():.4f} '
                         f'lr: {lr:.3e} {loss_count / (time.time() - start):.1f} img/s')
    if args.distributed:
        totals = torch.stack([loss_sum, torch.tensor(float(loss_count), device=device)])
        torch.distributed.all_reduce(totals)
        loss_sum, loss_count = totals[0], totals[1].item()
    return {'loss': loss_sum.item() / max(loss_count, 1)}, num_updates


@torch.no_grad()
def validate(model, loader, args, device, amp_autocast) -> Dict[str, float]:
    model.eval()
    meter = ClassificationMeter(device=device)
    loss_fn = nn.CrossEntropyLoss()
    for input, target in loader:
        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(input)
        meter.update(output, target, loss_fn(output.float(), target))
    if args.distributed:
        torch.distributed.all_reduce(meter.sums)
    return meter.compute()


def output_folder(args: argparse.Namespace, data_config) -> str:
    if args.resume and not args.output and not args.experiment:
        return os.path.dirname(os.path.abspath(args.resume))  # a resumed run continues in its own folder
    name = args.experiment or '-'.join([
        datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(data_config['input_size'][-1])])
    return utils.get_outdir(args.output or './output/train', name)


def train(args: argparse.Namespace, args_text: str) -> int:
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        args.device = 'cpu'
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    device = utils.init_distributed_device(args)
    primary = utils.is_primary(args)
    _logger.info(f'Process {args.rank}/{args.world_size} on {device}.' if args.distributed
                 else f'Training with a single process on {device}.')
    utils.random_seed(args.seed, args.rank)

    args.num_classes_given = args.num_classes is not None
    model = build_model(args)
    if args.resume:
        check_resume_checkpoint(args, model)
    if primary:
        _logger.info(f'Model {safe_model_name(args.model)} created, param count: '
                     f'{sum(p.numel() for p in model.parameters())}')
    data_config = resolve_data_config(vars(args), model=model, verbose=primary)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    amp_autocast, loss_scaler = nullcontext, None
    if args.amp:
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if device.type == 'cuda' and amp_dtype == torch.float16:
            loss_scaler = utils.NativeScaler(device=device.type)

    try:
        dataset_train, dataset_eval, class_counts = build_datasets(args)
    except UsageError:
        if args.dry_run:  # still check that the mixer, the loss and the schedule build from these flags
            create_mixer(args, args.num_classes, [1] * args.num_classes, collate=args.prefetcher)
            create_train_loss(args, [1] * args.num_classes)
            _build_optimizer_and_scheduler(args, model, updates_per_epoch=1)
        raise
    try:
        train_loss_fn = create_train_loss(args, class_counts)
    except ValueError as e:
        raise UsageError(str(e)) from None
    task = ResumableClassificationTask(model, criterion=train_loss_fn, device=device, verbose=primary)
    task.restore_random_states = not args.distributed
    if primary and class_counts is not None:
        _logger.info(f'Training on {len(dataset_train)} images, class counts: {class_counts.tolist()}')
    try:
        mixer = create_mixer(args, args.num_classes, class_counts, collate=args.prefetcher)
    except ValueError as e:
        raise UsageError(str(e)) from None
    mixup_fn = None if args.prefetcher else mixer
    loader_train, loader_eval = build_loaders(
        args, data_config, dataset_train, dataset_eval, mixer if args.prefetcher else None, device)

    if len(loader_train) == 0:
        raise UsageError(f'the training set has {len(dataset_train)} images, fewer than one batch of '
                         f'{args.batch_size} per process (the last partial batch is dropped): lower --batch-size')
    last_batch = math.ceil(len(dataset_train) / args.world_size) % args.batch_size
    if args.keep_last_batch and last_batch % 2 and mixer is not None:
        raise UsageError(f'--keep-last-batch: the last batch of each epoch would hold {last_batch} images, an odd '
                         f'number, and the mixer pairs the images of a batch: choose a --batch-size that leaves an '
                         f'even remainder of {len(dataset_train)} images, or drop the flag')
    check_input(args, model, loader_train.dataset, data_config, device)
    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    optimizer, lr_scheduler, num_epochs = _build_optimizer_and_scheduler(args, model, updates_per_epoch)
    if primary:
        _logger.info(f'Loss: {train_loss_fn}; mixer: {type(mixer).__name__ if mixer else None}; '
                     f'optimizer: {type(optimizer).__name__} lr {args.lr:g}; {num_epochs} epochs')
    if args.dry_run:
        return 0

    resume_epoch = None
    if args.resume:
        try:
            resume_epoch = resume_task_checkpoint(
                task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
                loss_scaler=None if args.no_resume_opt else loss_scaler, log_info=primary)
        except (RuntimeError, ValueError, KeyError) as e:  # e.g. optimizer state of another --opt
            raise UsageError(f'--resume {args.resume}: cannot restore the training state '
                             f'({" ".join(str(e).split())[:200]}); resume with the settings of the run that wrote '
                             f'it, or add --no-resume-opt to keep its weights only') from None
        if args.distributed and resume_epoch:  # the checkpoint holds the first process's streams only
            utils.random_seed(args.seed + resume_epoch * args.world_size, args.rank)
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device='cpu' if args.model_ema_force_cpu else None)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb)

    eval_metric = args.eval_metric if loader_eval is not None else 'loss'
    saver, output_dir = None, None
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    if primary:
        try:
            output_dir = output_folder(args, data_config)
        except OSError as e:
            raise UsageError(f'--output {args.output or "./output/train"}: cannot create the run folder '
                             f'({e.strerror or e})') from None
        files.remove_stale_temporaries(output_dir, ['summary.csv', 'args.yaml', 'class_counts.json', 'link'])
        saver = RunCheckpointSaver(
            model=task.get_trainable_module(), optimizer=optimizer, args=args, amp_scaler=loss_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=eval_metric == 'loss',
            max_history=args.checkpoint_hist, task=task)
        if args.resume and os.path.dirname(os.path.abspath(args.resume)) == output_dir:
            saver.load_state_dict_from_checkpoint(args.resume)
        files.write_atomic(os.path.join(output_dir, 'args.yaml'), args_text)
        if class_counts is not None:
            files.write_atomic(os.path.join(output_dir, 'class_counts.json'), json.dumps(class_counts.tolist()))
        trim_summary(os.path.join(output_dir, 'summary.csv'), start_epoch)
        _logger.info(f'Output folder: {output_dir}')
    if lr_scheduler is not None and start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)

    eval_model = task.get_eval_model()
    num_updates = start_epoch * updates_per_epoch
    best = None
    for epoch in range(start_epoch, num_epochs):
        if hasattr(loader_train.sampler, 'set_epoch'):
            loader_train.sampler.set_epoch(epoch)
        if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            if args.prefetcher and loader_train.mixup_enabled:
                loader_train.mixup_enabled = False
            elif mixup_fn is not None:
                mixup_fn.mixup_enabled = False
        train_metrics, num_updates = train_one_epoch(
            epoch, task, loader_train, optimizer, args, device, lr_scheduler, amp_autocast, loss_scaler,
            mixup_fn, num_updates)
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(task.get_trainable_module(), args.world_size, args.dist_bn == 'reduce')
        eval_metrics = None
        if loader_eval is not None and ((epoch + 1) % args.val_interval == 0 or epoch + 1 == num_epochs):
            eval_metrics = validate(eval_model, loader_eval, args, device, amp_autocast)
            if task.has_ema():
                eval_metrics = validate(task.get_eval_model(ema=True), loader_eval, args, device, amp_autocast)
            if primary:
                _logger.info(f'Eval: {epoch} ' + ' '.join(f'{k}: {v:.4f}' for k, v in eval_metrics.items()))
        if primary:
            lrs = [group['lr'] for group in optimizer.param_groups]
            if eval_metrics is None and loader_eval is not None:  # same columns on every row
                row_eval = {k: '' for k in EVAL_KEYS}
            else:
                row_eval = eval_metrics
            append_summary(os.path.join(output_dir, 'summary.csv'), epoch, train_metrics, row_eval,
                           lr=sum(lrs) / len(lrs))
            metric = (eval_metrics or train_metrics).get(eval_metric)
            best = saver.save_checkpoint(epoch, metric=metric)
        if lr_scheduler is not None:
            lr_scheduler.step(epoch + 1, metric=(eval_metrics or train_metrics).get(eval_metric))
    if primary and best and best[0] is not None:
        _logger.info(f'*** Best metric: {best[0]} (epoch {best[1]})')
    return 0


def _build_optimizer_and_scheduler(args, model, updates_per_epoch):
    if not args.lr:
        batch_ratio = args.batch_size * args.world_size * args.grad_accum_steps / args.lr_base_size
        scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
        args.lr = args.lr_base * (batch_ratio ** 0.5 if scale == 'sqrt' else batch_ratio)
    try:
        optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
        lr_scheduler, num_epochs = create_scheduler_v2(
            optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss'),
            updates_per_epoch=updates_per_epoch)
    except (AssertionError, ValueError) as e:
        raise UsageError(f'optimizer/scheduler: {e or "invalid --opt or --sched"}') from None
    return optimizer, lr_scheduler, num_epochs


class _StdoutHandler(logging.StreamHandler):
    """Logs to the current sys.stdout (stderr is kept for problems), also when it is swapped later."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def setup_logging() -> None:
    if not any(isinstance(h, _StdoutHandler) for h in logging.root.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(utils.log.FormatterNoInfo())
        logging.root.addHandler(handler)
        logging.root.setLevel(logging.INFO)


def main(argv: Optional[list] = None) -> int:
    setup_logging()
    args, args_text = cli.parse_args(argv)
    try:
        return train(args, args_text)
    except (UsageError, files.FileProblem) as e:
        print(f'train_icm.py: error: {e}', file=sys.stderr)
        return 2
    finally:
        release_process_group()


if __name__ == '__main__':
    sys.exit(main())
