"""What the benchmark suites share: mean +- std, paired differences with t-intervals, figures, the commit."""
import contextlib
import math
import os
import statistics
import subprocess
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

# Two-sided 95 % quantiles of Student's t by degrees of freedom (beyond 30, the normal's 1.96: at most 4 % narrow).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
       21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042}


def mean_std(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f'{values[0]:.2f}' if values else '-'
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


def t_interval(diffs: Sequence[float]) -> Tuple[float, float, float]:
    """Mean of paired differences and its 95 % t-interval (low, high); the mean alone (twice) for one value."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, mean, mean
    half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def paired_interval(diffs: Sequence[float]) -> str:
    """Mean of paired differences and its 95 % t-interval, e.g. ``+1.20 [+0.10, +2.30]``."""
    if not diffs:
        return '-'
    mean, low, high = t_interval(diffs)
    return f'{mean:+.2f}' if len(diffs) < 2 else f'{mean:+.2f} [{low:+.2f}, {high:+.2f}]'


def paired_diffs(by_seed: Mapping[tuple, float], a: str, b: str) -> list:
    """``by_seed[(method, seed)]`` -> the differences a - b over the seeds both have."""
    return [v - by_seed[(b, s)] for (m, s), v in sorted(by_seed.items(), key=lambda kv: kv[0][1])
            if m == a and (b, s) in by_seed]


@contextlib.contextmanager
def panel_row(count: int, path: str, width: float = 4.6, height: float = 3.6) -> Iterator[Optional[list]]:
    """A row of ``count`` matplotlib axes, the figure saved to ``path`` (PNG) when the block ends; None without
    matplotlib (the caller draws nothing)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        yield None
        return
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    yield list(axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def level_panels(panels: Dict[str, Dict[str, Sequence[float]]], path: str, xlabel: str = 'test top-1 %') -> bool:
    """One panel per setting: every seed's value as a small dot, and the mean with a std error bar beside it
    (IC methods in orange). Points, not bars: the axis starts near the lowest value, which a bar's length would
    misstate. False without matplotlib."""
    with panel_row(len(panels), path, 4.2, 4) as axes:
        if axes is None:
            return False
        for ax, (title, methods) in zip(axes, panels.items()):
            names = [m for m, v in methods.items() if v]
            for row, name in enumerate(names):
                values = methods[name]
                color = 'tab:orange' if name.startswith('IC') else 'tab:blue'
                ax.errorbar(statistics.mean(values), row, xerr=statistics.stdev(values) if len(values) > 1 else 0.,
                            fmt='o', color=color, markersize=8, capsize=4)
                ax.plot(values, [row + 0.25] * len(values), '.', color=color, alpha=0.5)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            ax.set_ylim(len(names) - 0.5, -0.5)
            ax.grid(axis='x', alpha=0.3)
            ax.set_title(title)
            ax.set_xlabel(xlabel)
    return True


def git_commit(root: str) -> str:
    """The checkout's short commit, with ``+dirty`` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(['git', '-C', root, *args], capture_output=True, text=True).stdout.strip()
    commit = git('rev-parse', '--short', 'HEAD') or 'unknown'
    return commit + ('+dirty' if git('status', '--porcelain', '--untracked-files=no') else '')


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return f'{line.split(":", 1)[1].strip()} ({os.cpu_count()} cores)'
    except OSError:
        pass
    return f'CPU ({os.cpu_count()} cores)'
