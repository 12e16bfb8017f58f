"""Which classes each finished CIFAR run gets right, and how confident it is: per-class test counts.

    python benchmarks/cifar_classes.py [--data-dir data] [--runs-dir output/cifar]
    python benchmarks/cifar.py --report          # then shows the tables made from them beside the others

A run's overall top-1 hides where its errors go: on a long tail, ERM never predicts the rarest classes
and a loss that over-corrects never predicts the most frequent. Its ECE hides which way it errs, over-
or underconfident. This reads every run of ``cifar.csv`` whose folder is still in ``--runs-dir``,
evaluates its last checkpoint on the test set with the run's own ``args.yaml`` (train_icm.py's model,
data and transform code), checks that it reproduces the run's recorded top-1, and appends one row per
class (training images, test images, correct, predicted, summed top softmax probability) to
``cifar-classes.csv``. Runs already there are skipped; runs whose folder is gone are reported, not lost.
"""
import argparse
import os
import sys
from typing import Dict, List

import torch

from cifar import CLASS_FIELDS, ROOT, Run, append_row, fail, read_class_rows, read_rows, run_name


def evaluate_run(run_dir: str, data_dir: str) -> List[Dict]:
    """Per-class counts and summed top softmax probability of the run's last checkpoint on its evaluation
    split."""
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
    classes = args.num_classes
    test_images, correct, predicted = (torch.zeros(classes, dtype=torch.long) for _ in range(3))
    confidence = torch.zeros(classes, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for images, target in loader:
            logits = model(images)
            guess, top = logits.argmax(dim=1), logits.softmax(dim=1).amax(dim=1)
            test_images += torch.bincount(target, minlength=classes)
            correct += torch.bincount(target[guess == target], minlength=classes)
            predicted += torch.bincount(guess, minlength=classes)
            confidence += torch.bincount(target, weights=top.double(), minlength=classes)
    return [{'class': c, 'train_images': int(counts[c]), 'test_images': int(test_images[c]),
             'correct': int(correct[c]), 'predicted': int(predicted[c]), 'confidence': round(float(confidence[c]), 4)}
            for c in range(classes)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-dir', default=os.path.join(ROOT, 'data'))
    parser.add_argument('--runs-dir', default=os.path.join(ROOT, 'output', 'cifar'))
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results'))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = os.path.join(args.out, 'cifar-classes.csv')
    done = {(r['recipe'], r['setting'], r['method'], r['seed']) for r in read_class_rows(path)}
    missing = []
    for row in read_rows(os.path.join(args.out, 'cifar.csv')):
        key = (row['recipe'], row['setting'], row['method'], row['seed'])
        run_dir = os.path.join(args.runs_dir, run_name(Run(row['block'], *key[1:]), row['recipe']))
        if key in done:
            continue
        if not os.path.exists(os.path.join(run_dir, 'last.pth.tar')):
            missing.append(os.path.basename(run_dir))
            continue
        classes = evaluate_run(run_dir, args.data_dir)
        top1 = 100 * sum(c['correct'] for c in classes) / sum(c['test_images'] for c in classes)
        if abs(top1 - row['top1']) > 0.015:
            fail(f'{run_dir}: its last checkpoint gives top-1 {top1:.2f}, the run recorded {row["top1"]:.2f}')
        for c in classes:
            append_row(path, {'setting': key[1], 'method': key[2], 'seed': key[3], 'recipe': key[0], **c},
                       CLASS_FIELDS)
        print(f'{os.path.basename(run_dir)}: top-1 {top1:.2f} (recorded {row["top1"]:.2f})', flush=True)
    if missing:
        print(f'{len(missing)} runs of cifar.csv have no folder with last.pth.tar in {args.runs_dir}: '
              + ', '.join(missing))
    return 0


if __name__ == '__main__':
    sys.exit(main())
