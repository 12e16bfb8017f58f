"""gather_distributed=True: the global-batch ICM loss without gathering logits, against the earlier
all-gather of logits and targets, side by side in one run; and a cost model from the counted bytes.

    torchrun --nproc-per-node 2 benchmarks/gather.py [--classes 100 1000 21843] [--batches 256 1024 4096]
        [--steps 3] [--out benchmarks/results/gather-cpu-2.md]
    python benchmarks/gather.py --cost-model [--out benchmarks/results/gather-cost-model.md]

Each rank holds N / world_size rows (targets from timm's Mixup, label smoothing 0.1) and, per
configuration, times the loss's forward + backward for both ways ('new': ``gather_distributed=True``;
'old': the all-gather of logits, ``timm_icm.loss._GatheringLogits``). Reported per rank and step:

- the bytes handed to torch.distributed's collectives: every collective the step calls is wrapped
  and counts its input tensors ('in': what this rank contributes) and its output tensors ('out':
  what it gets back; an all-reduce counts its tensor both ways). Medians over steps; every rank's
  count is the same and the script checks that;
- the loss's forward + backward time (median over steps of the slowest rank);
- its peak memory: the largest resident-set growth over the step's start, sampled every 0.2 ms
  (glibc is told to map every allocation over 64 KiB on its own, so a freed tensor leaves the
  resident set at once), the largest over ranks.

The cost model (``--cost-model``) prices per-step communication of ICM (old and new, from the
byte formulas that this script checks against the counted bytes) and of DDP's gradient all-reduce,
for ResNet-50 and ViT-B/16 at N = 1024 / 4096 / 16384 and C = 1000 / 21843, at NVLink-class and
InfiniBand-class bandwidths; the assumed figures and their sources are printed with the table.
"""
import argparse
import ctypes
import inspect
import os
import platform
import statistics
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timm.data import Mixup  # noqa: E402

from timm_icm import InfiniteClassCrossEntropy  # noqa: E402
from timm_icm.loss import _GatheringLogits  # noqa: E402

COLLECTIVES = {  # name: (parameter handed in, parameter handed back)
    'all_reduce': ('tensor', 'tensor'),
    'all_gather': ('tensor', 'tensor_list'),
    'all_gather_into_tensor': ('input_tensor', 'output_tensor'),
    'reduce_scatter': ('input_list', 'output'),
    'reduce_scatter_tensor': ('input', 'output'),
    'all_to_all': ('input_tensor_list', 'output_tensor_list'),
    'all_to_all_single': ('input', 'output'),
    'scatter': ('scatter_list', 'tensor'),
    'gather': ('tensor', 'gather_list'),
    'broadcast': ('tensor', 'tensor'),
    'reduce': ('tensor', 'tensor'),
}


def nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return 0


class CollectiveBytes:
    """Wraps torch.distributed's collectives; counts the bytes of the tensors handed to them while on."""

    def __init__(self):
        self.on, self.sent, self.received, self.calls = False, 0, 0, 0
        for name, (given, returned) in COLLECTIVES.items():
            original = getattr(dist, name)
            setattr(dist, name, self._counting(original, inspect.signature(original), given, returned))

    def _counting(self, original, signature, given, returned):
        def collective(*args, **kwargs):
            if self.on:
                bound = signature.bind_partial(*args, **kwargs).arguments
                self.sent += nbytes(bound.get(given))
                self.received += nbytes(bound.get(returned))
                self.calls += 1
            return original(*args, **kwargs)
        return collective

    def start(self):
        self.on, self.sent, self.received, self.calls = True, 0, 0, 0

    def stop(self):
        self.on = False
        return self.sent, self.received, self.calls


def rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class PeakResidentSet:
    """The largest resident-set growth while on, sampled from a thread (torch's kernels release the GIL)."""

    def __enter__(self):
        self.start, self.peak, self.running = rss_bytes(), 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes() - self.start)
            time.sleep(0.0002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss_bytes() - self.start)


def map_large_allocations():
    """glibc: every allocation over 64 KiB in its own mapping, returned to the system when freed."""
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (also stops glibc from raising it)
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def rank_batch(num_rows: int, num_classes: int, rank: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    labels = torch.randint(0, num_classes, (num_rows,), generator=gen)
    np.random.seed(seed * 1000 + rank)
    mixer = Mixup(mixup_alpha=0.8, mode='elem', label_smoothing=0.1, num_classes=num_classes)
    _, target = mixer(torch.zeros(num_rows, 1, 1, 1), labels)
    return torch.randn(num_rows, num_classes, generator=gen), target


def step(loss_fn, logits, target, counter):
    dist.barrier()
    leaf = logits.clone().requires_grad_()  # outside the measured step
    with PeakResidentSet() as memory:
        counter.start()
        start = time.perf_counter()
        loss = loss_fn(leaf, target)
        loss.backward()
        seconds = time.perf_counter() - start
        sent, received, calls = counter.stop()
    return dict(seconds=seconds, sent=sent, received=received, calls=calls, peak=memory.peak, loss=loss.item())


WAYS = {'old': lambda: _GatheringLogits(), 'new': lambda: InfiniteClassCrossEntropy(gather_distributed=True)}


def measure(num_classes, global_batch, steps, world_size, rank, counter, ways=tuple(WAYS)):
    logits, target = rank_batch(global_batch // world_size, num_classes, rank)
    rows = {}
    losses = {way: WAYS[way]() for way in ways}
    for way, loss_fn in losses.items():
        step(loss_fn, logits, target, counter)  # warm-up: 'auto' reads the first batch
    results = {way: [] for way in ways}
    for _ in range(steps):  # interleaved: the machine's drift hits both ways alike
        for way, loss_fn in losses.items():
            results[way].append(step(loss_fn, logits, target, counter))
    for way, runs in results.items():
        mine = dict(sent=statistics.median(r['sent'] for r in runs),
                    received=statistics.median(r['received'] for r in runs),
                    calls=statistics.median(r['calls'] for r in runs),
                    seconds=[r['seconds'] for r in runs], peak=max(r['peak'] for r in runs), loss=runs[-1]['loss'])
        everyone = [None] * world_size
        dist.all_gather_object(everyone, mine)
        rows[way] = everyone
    return rows


def summarise(num_classes, global_batch, world_size, rows):
    out = {}
    for way, everyone in rows.items():
        counts = {(r['sent'], r['received'], r['calls']) for r in everyone}
        assert len(counts) == 1, f'ranks counted different bytes: {counts}'
        slowest = [max(r['seconds'][i] for r in everyone) for i in range(len(everyone[0]['seconds']))]
        out[way] = dict(sent=everyone[0]['sent'], received=everyone[0]['received'], calls=everyone[0]['calls'],
                        seconds=statistics.median(slowest), peak=max(r['peak'] for r in everyone),
                        loss=statistics.mean(r['loss'] for r in everyone))
    new = out['new']
    expected_new = new_bytes(global_batch, world_size)
    assert (new['sent'], new['received']) == expected_new, ((new['sent'], new['received']), expected_new)
    if 'old' in out:
        old = out['old']
        assert abs(old['loss'] - new['loss']) <= 1e-4 * abs(old['loss']), (old['loss'], new['loss'])
        expected_old = old_bytes_gloo(global_batch, num_classes, world_size)
        assert (old['sent'], old['received']) == expected_old, ((old['sent'], old['received']), expected_old)
    return out


def new_bytes(global_batch, world_size, merge=False):
    """(in, out) per rank and step of gather_distributed=True, float32 targets: the row-count check
    (two int64), each row's floor, three largest values and two classes (6 x 4 bytes), the column
    maxima and sums (2 x 4 bytes a column); with duplicates='merge' one int64 key a row."""
    rows = global_batch // world_size
    sent = 16 + 24 * rows + 8 * global_batch + (8 * rows if merge else 0)
    received = 16 + 24 * global_batch + 8 * global_batch + (8 * global_batch if merge else 0)
    return sent, received


def old_bytes_gloo(global_batch, num_classes, world_size):
    """(in, out) per rank and step of the all-gather of logits and dense targets (float32), as torch
    does it on gloo: all_gather forward, its backward by one scatter per rank (all-to-all)."""
    rows, row = global_batch // world_size, 4 * num_classes
    sent = 2 * rows * row + global_batch * row  # my logits and targets; my gradient of every gathered row
    received = 2 * global_batch * row + global_batch * row  # every rank's logits and targets; my rows' gradients
    return sent, received


def mib(value):
    return f'{value / 2 ** 20:.2f}' if value >= 2 ** 20 else f'{value / 2 ** 20:.4f}'


def human(value):
    for unit, size in (('GB', 1e9), ('MB', 1e6), ('KB', 1e3)):
        if value >= size:
            return f'{value / size:.3g} {unit}'
    return f'{value:.0f} B'


def table(summaries, world_size, steps):
    command = ' '.join(['torchrun', '--nproc-per-node', str(world_size), 'benchmarks/gather.py', *sys.argv[1:]])
    lines = [f'`{command}` on {platform.processor() or "CPU"}, '
             f'{os.cpu_count()} cores, torch {torch.__version__}, gloo, {world_size} processes; '
             f'medians of {steps} steps. Bytes: per rank and step, handed to torch.distributed\'s collectives '
             f'(in: this rank\'s tensors; out: what it gets back). Time: the loss\'s forward + backward, '
             f'slowest rank. Peak: largest resident-set growth during the step, largest rank.', '',
             '| C | N (global) | way | collectives | bytes in | bytes out | old / new bytes out | time (ms) | '
             'peak (MiB) |',
             '|---:|---:|---|---:|---:|---:|---:|---:|---:|']
    for (num_classes, global_batch), out in summaries:
        if 'old' not in out:  # the old way's bytes are counted by formula (checked on the measured rows)
            sent, received = old_bytes_gloo(global_batch, num_classes, world_size)
            out = {'old': dict(calls=2 + world_size, sent=sent, received=received, seconds=None, peak=None), **out}
        ratio = out['old']['received'] / out['new']['received']
        for way in ('old', 'new'):
            r = out[way]
            if r['seconds'] is None:
                lines.append(f'| {num_classes} | {global_batch} | {way} | {r["calls"]:.0f} | {human(r["sent"])} | '
                             f'{human(r["received"])} |  | not run (--new-only-batches): counted by formula | |')
                continue
            lines.append(f'| {num_classes} | {global_batch} | {way} | {r["calls"]:.0f} | {human(r["sent"])} | '
                         f'{human(r["received"])} | {f"{ratio:,.0f}x" if way == "new" else ""} | '
                         f'{r["seconds"] * 1e3:.1f} | {mib(r["peak"])} |')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------- cost model

MODELS = {  # parameters at C classes: timm's resnet50 and vit_base_patch16_224 (create_model(name, num_classes=C))
    'ResNet-50': {1000: 25_557_032, 21843: 68_264_339},
    'ViT-B/16': {1000: 86_567_656, 21843: 102_595_923},
}
BANDWIDTH = {  # bytes per second and GPU, one direction, and the latency of one collective
    'NVLink-class': (450e9, 10e-6),
    'InfiniBand-class': (50e9, 25e-6),
}
ASSUMPTIONS = """Assumptions (per GPU, one direction):
- NVLink-class 450 GB/s: NVIDIA H100 SXM, NVLink 4 at 900 GB/s bidirectional (H100 datasheet);
  InfiniBand-class 50 GB/s: one NDR 400 Gb/s ConnectX-7 adapter per GPU, as in a DGX H100 (NVIDIA).
  Both are link rates; NCCL's measured bus bandwidth is lower (nccl-tests: roughly 70-90 % of them).
- Ring collectives (nccl-tests' PERFORMANCE.md): an all-reduce moves 2 (W - 1) / W of its buffer through
  each GPU's link, an all-gather or reduce-scatter (W - 1) / W of the full buffer. W = N / 128 (128 images
  per GPU: W = 8, 32, 128); at W = 32 and 128 the ring crosses nodes, so the InfiniBand row is the one that
  applies there, the NVLink row is the lower bound of one node's links.
- 10 us (NVLink) and 25 us (InfiniBand) per collective, an assumed latency: the new way's buffers
  (tens to hundreds of KB) are latency-bound, the old way's and DDP's are bandwidth-bound.
- DDP: one all-reduce of every parameter's gradient, the classifier's C x D included (timm's parameter
  counts at C = 1000: ResNet-50 25.6 M, ViT-B/16 86.6 M; at C = 21843: 68.3 M, 102.6 M), fp32 (DDP's
  default, also under AMP, whose parameters stay fp32) and bf16 (with a bf16 compression hook),
  in 25 MB buckets (DDP's default), one collective each.
- ICM old: all-gather of fp32 logits and fp32 dense targets (two collectives), reduce-scatter of the
  logits' gradient in the backward (NCCL's path; one). ICM new, fp32 targets: one all-reduce of two
  int64 (row counts), one all-gather of 24 bytes a row, two all-reduces of 4 bytes a column
  (4 collectives; the byte formulas are those the measured runs check exactly).
"""


def ring_seconds(kind, buffer_bytes, world_size, collectives, link):
    bandwidth, latency = BANDWIDTH[link]
    factor = 2 * (world_size - 1) / world_size if kind == 'all_reduce' else (world_size - 1) / world_size
    return buffer_bytes * factor / bandwidth + collectives * latency


def icm_traffic(way, global_batch, num_classes, world_size):
    """[(collective kind, full buffer bytes, collectives)] per step."""
    if way == 'old':
        return [('all_gather', 2 * 4 * global_batch * num_classes, 2),
                ('reduce_scatter', 4 * global_batch * num_classes, 1)]
    return [('all_reduce', 16, 1), ('all_gather', 24 * global_batch, 1), ('all_reduce', 8 * global_batch, 2)]


def ddp_traffic(parameters, bytes_per_value):
    buffer = parameters * bytes_per_value
    return [('all_reduce', buffer, max(1, round(buffer / 25e6)))]


def wire_bytes(traffic, world_size):
    return sum(b * (2 * (world_size - 1) / world_size if k == 'all_reduce' else (world_size - 1) / world_size)
               for k, b, _ in traffic)


def seconds(traffic, world_size, link):
    return sum(ring_seconds(k, b, world_size, c, link) for k, b, c in traffic)


def cost_model() -> str:
    lines = ['Per step and GPU: bytes through each GPU\'s link (ring collectives) and the time they take. '
             'ICM is the loss alone; DDP is the gradient all-reduce of the model it trains.', '',
             '| N | W | C | ICM old | ICM new | DDP ResNet-50 fp32 / bf16 | DDP ViT-B/16 fp32 / bf16 | '
             'ICM old, NVLink / IB | ICM new, NVLink / IB | DDP ResNet-50 fp32, NVLink / IB | '
             'DDP ViT-B/16 fp32, NVLink / IB |',
             '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']

    def ms(traffic, world_size):
        return ' / '.join(f'{seconds(traffic, world_size, link) * 1e3:.3g} ms' for link in BANDWIDTH)

    for global_batch in (1024, 4096, 16384):
        world_size = global_batch // 128
        for num_classes in (1000, 21843):
            old = icm_traffic('old', global_batch, num_classes, world_size)
            new = icm_traffic('new', global_batch, num_classes, world_size)
            ddp = {name: [ddp_traffic(p[num_classes], 4), ddp_traffic(p[num_classes], 2)] for name, p in MODELS.items()}
            lines.append(
                f'| {global_batch} | {world_size} | {num_classes} | {human(wire_bytes(old, world_size))} | '
                f'{human(wire_bytes(new, world_size))} | '
                + ' | '.join(' / '.join(human(wire_bytes(t, world_size)) for t in ddp[name]) for name in MODELS)
                + f' | {ms(old, world_size)} | {ms(new, world_size)} | '
                + ' | '.join(ms(ddp[name][0], world_size) for name in MODELS) + ' |')
    return '\n'.join(lines) + '\n\n' + ASSUMPTIONS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--classes', type=int, nargs='+', default=[100, 1000, 21843])
    parser.add_argument('--batches', type=int, nargs='+', default=[256, 1024, 4096], help='global batch sizes N')
    parser.add_argument('--new-only-batches', type=int, nargs='*', default=[],
                        help='global batch sizes too large for the old way on this machine: the new way alone')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1, help='torch threads per process')
    parser.add_argument('--cost-model', action='store_true', help='print the cost model; starts no processes')
    parser.add_argument('--out', help='also write the table to this markdown file')
    args = parser.parse_args(argv)
    if args.cost_model:
        text = cost_model()
    else:
        text = run_benchmark(args)
        if text is None:
            return 0
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    return 0


def run_benchmark(args):
    if 'RANK' not in os.environ:
        sys.exit('benchmarks/gather.py measures under torchrun: torchrun --nproc-per-node 2 benchmarks/gather.py')
    map_large_allocations()
    torch.set_num_threads(args.threads)
    dist.init_process_group('gloo')
    rank, world_size = dist.get_rank(), dist.get_world_size()
    counter = CollectiveBytes()
    summaries = []
    try:
        for num_classes in args.classes:
            for global_batch in args.batches + args.new_only_batches:
                ways = ('new',) if global_batch in args.new_only_batches else tuple(WAYS)
                rows = measure(num_classes, global_batch, args.steps, world_size, rank, counter, ways)
                summaries.append(((num_classes, global_batch), summarise(num_classes, global_batch, world_size, rows)))
                if rank == 0:
                    print(f'C={num_classes} N={global_batch}: ' + ', '.join(
                        f'{way} {human(r["received"])} {r["seconds"] * 1e3:.1f} ms {mib(r["peak"])} MiB'
                        for way, r in summaries[-1][1].items()), flush=True)
    finally:
        dist.destroy_process_group()
    return table(summaries, world_size, args.steps) if rank == 0 else None


if __name__ == '__main__':
    sys.exit(main())
