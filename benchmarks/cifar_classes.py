"""Which classes each finished CIFAR run gets right, and how confident it is: per-class test counts, and the
calibration before and after temperature scaling.

    python benchmarks/cifar_classes.py [--data-dir data] [--runs-dir ~/.cache/timm-icm/cifar]
    python benchmarks/cifar.py --report          # then shows the tables made from them beside the others

A run's overall top-1 hides where its errors go: on a long tail, ERM never predicts the rarest classes
and a loss that over-corrects never predicts the most frequent. Its ECE hides which way it errs, over-
or underconfident. This reads every run of ``cifar.csv`` whose folder is still in ``--runs-dir``,
evaluates its last checkpoint on the test set with the run's own ``args.yaml`` (train_icm.py's model,
data and transform code), checks that it reproduces the run's recorded top-1, and appends one row per
class (training images, test images, correct, predicted, summed top softmax probability) to
``cifar-classes.csv``. It also appends one row per run to ``cifar-calibration.csv``: the ECE, and the ECE
after temperature scaling (Guo et al. 2017), the temperature fitted by NLL on one half of the test set and
measured on the other, then the halves swapped (``timm_icm.metrics.temperature_scaled_ece``). Runs already
there are skipped; runs whose folder is gone are reported, not lost. The long recipe's schedule check (a
run with fewer epochs than its recipe) is left out: it only answers whether 200 epochs are enough.
"""
import argparse
import os
import sys
from typing import Dict, List, Tuple

import torch
from timm_icm.metrics import temperature_scaled_ece

from suite import (CALIBRATION_FIELDS, CLASS_FIELDS, ROOT, RUNS_DIR, append_row, fail, is_schedule_check,
                   read_calibration_rows, read_class_rows, read_rows, row_run, run_name)


def evaluate_run(run_dir: str, data_dir: str) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """The test logits and labels of the run's last checkpoint on its evaluation split, and its training set's
    class counts."""
    sys.path.insert(0, ROOT)
    from timm.data import resolve_data_config
    from timm.models import load_checkpoint

    import train_icm
    args, _ = train_icm.cli.parse_args(['-c', os.path.join(run_dir, 'args.yaml'), '--data-dir', data_dir,
                                        '--workers', '0', '--no-prefetcher', '--device', 'cpu'])
    args.prefetcher, args.distributed = False, False
    model = train_icm.build_model(args)
    load_checkpoint(model, os.path.join(run_dir, 'last.pth.tar'))
    dataset_train, dataset_eval, counts = train_icm.build_datasets(args)
    data_config = resolve_data_config(vars(args), model=model)
    _, loader = train_icm.build_loaders(args, data_config, dataset_train, dataset_eval, None, torch.device('cpu'))
    model.eval()
    with torch.no_grad():
        logits, targets = zip(*((model(images), target) for images, target in loader))
    return torch.cat(logits), torch.cat(targets), [int(n) for n in counts]


def class_counts(logits: torch.Tensor, target: torch.Tensor, train_counts: List[int]) -> List[Dict]:
    """Per class: training images, test images, correct, predicted, and the summed top softmax probability."""
    classes = len(train_counts)
    guess, top = logits.argmax(dim=1), logits.softmax(dim=1).amax(dim=1)
    test_images = torch.bincount(target, minlength=classes)
    correct = torch.bincount(target[guess == target], minlength=classes)
    predicted = torch.bincount(guess, minlength=classes)
    confidence = torch.bincount(target, weights=top.double(), minlength=classes)
    return [{'class': c, 'train_images': train_counts[c], 'test_images': int(test_images[c]),
             'correct': int(correct[c]), 'predicted': int(predicted[c]), 'confidence': round(float(confidence[c]), 4)}
            for c in range(classes)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-dir', default=os.path.join(ROOT, 'data'))
    parser.add_argument('--runs-dir', default=RUNS_DIR)
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results'))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = os.path.join(args.out, 'cifar-classes.csv')
    calibration_path = os.path.join(args.out, 'cifar-calibration.csv')
    def key_of(r: Dict) -> Tuple:
        return r['recipe'], r['setting'], r['model'], r['method'], r['seed']
    done = {key_of(r) for r in read_class_rows(path)}
    calibrated = {key_of(r) for r in read_calibration_rows(calibration_path)}
    missing = []
    for row in read_rows(os.path.join(args.out, 'cifar.csv')):
        key = key_of(row)
        run_dir = os.path.join(args.runs_dir, run_name(row_run(row), row['recipe']))
        if (key in done and key in calibrated) or is_schedule_check(row):
            continue
        if not os.path.exists(os.path.join(run_dir, 'last.pth.tar')):
            missing.append(os.path.basename(run_dir))
            continue
        logits, target, train_counts = evaluate_run(run_dir, args.data_dir)
        top1 = 100 * (logits.argmax(dim=1) == target).double().mean().item()
        if abs(top1 - row['top1']) > 0.015:
            fail(f'{run_dir}: its last checkpoint gives top-1 {top1:.2f}, the run recorded {row["top1"]:.2f}')
        names = {k: row[k] for k in ('setting', 'model', 'method', 'seed', 'recipe')}
        if key not in done:
            for c in class_counts(logits, target, train_counts):
                append_row(path, {**names, **c}, CLASS_FIELDS)
        if key not in calibrated:
            calibration = {k: round(v, 4) for k, v in temperature_scaled_ece(logits, target).items()}
            append_row(calibration_path, {**names, **calibration}, CALIBRATION_FIELDS)
        print(f'{os.path.basename(run_dir)}: top-1 {top1:.2f} (recorded {row["top1"]:.2f})', flush=True)
    if missing:
        print(f'{len(missing)} runs of cifar.csv have no folder with last.pth.tar in {args.runs_dir} (skipped), '
              f'e.g. {", ".join(missing[:3])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
