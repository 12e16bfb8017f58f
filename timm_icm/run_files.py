"""The run folder's files, each put in place whole: a run killed at any moment (SIGKILL included) resumes
from its newest complete checkpoint, with every finished epoch in ``summary.csv`` once."""
import csv
import io
import os
import shutil
from typing import Dict, Optional

from timm import utils

from . import files


def trim_summary(path: str, start_epoch: int) -> None:
    """Keep the rows of the epochs before ``start_epoch``, each once, so that a resumed run adds every epoch once.

    A row cut short (a run killed while writing it) is dropped; with no row left the file goes, and the next
    row writes a fresh header.
    """
    if not os.path.exists(path):
        return
    header, rows = files.read_csv(path, 'summary')
    kept = {}
    for row in rows:
        try:
            epoch = int(float(row[0]))
        except ValueError:
            continue
        if epoch < start_epoch:
            kept[epoch] = row
    if not kept:
        os.remove(path)
        return
    text = io.StringIO()
    csv.writer(text).writerows([header] + [kept[e] for e in sorted(kept)])
    files.write_atomic(path, text.getvalue())


def append_summary(path: str, epoch: int, train_metrics: Dict, eval_metrics: Optional[Dict], lr: float) -> None:
    """One epoch's row of summary.csv: timm's ``update_summary`` columns and format (a header when the file is
    new), written as a whole new file put in place by ``os.replace``: a run killed meanwhile leaves the old one."""
    row = {'epoch': epoch, **{f'train_{k}': v for k, v in train_metrics.items()}}
    row.update({f'eval_{k}': v for k, v in (eval_metrics or {}).items()})
    row['lr'] = lr
    before = b''
    if os.path.exists(path):
        with open(path, 'rb') as f:
            before = f.read()
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(row))
    if not before:
        writer.writeheader()
    writer.writerow(row)
    files.write_atomic(path, before + text.getvalue().encode('utf-8'))


class RunCheckpointSaver(utils.CheckpointSaver):
    """timm's ``CheckpointSaver``, each file put in place in one atomic step.

    timm's saver removes ``last.pth.tar`` (and ``model_best.pth.tar``) before it renames or links the new
    one onto that name: a run killed between the two is left without it. Here the new file is linked (or
    copied) under a temporary name and renamed over the old one with ``os.replace``, so a kill at any moment
    leaves either the old complete file or the new complete one.
    """

    def _replace(self, src, dst):
        os.replace(src, dst)

    def _duplicate(self, src, dst):
        tmp = os.path.join(os.path.dirname(dst), f'.link.{os.path.basename(dst)}.tmp')
        if os.path.lexists(tmp):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except (OSError, NotImplementedError):
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
