"""Refresh the result tables of Markdown pages (the README, docs/cifar.md) from the CSV each names, keeping
their rows: a headline table's comparisons, a levels table's methods; the survival table is the report's whole.

    python benchmarks/tables.py README.md docs/cifar.md

The blocks, each between its markers, with the CSV and recipe in the opening one:
  <!-- headline: benchmarks/results/cifar.csv, recipe long -->  data | comparison | seeds | difference | paper
  <!-- levels: benchmarks/results/cifar.csv, recipe long -->    data | method | seeds | top-1 | ECE | paper | published
  <!-- survival: benchmarks/results/cifar.csv -->               cifar_converged.survival of the CSV
tests/test_docs.py recomputes every row on its own; this writes them, so that a run landing changes a page by one
command instead of by hand. Only the ResNet-20 blocks' rows count (the capacity ladder has its own tables).
"""
import os
import re
import sys
from typing import Callable, Dict, List

from cifar_converged import published_top1, survival
from stats import mean_std, paired_diffs, paired_interval
from suite import DEFAULT_MODEL, ROOT, SETTINGS, fail, is_schedule_check, read_rows

BLOCK = re.compile(r'(<!-- (headline|levels|survival): (\S+?)(?:, recipe (\w+))? -->\n)(.*?)(<!-- /\2 -->)', re.S)


def cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip('|').split('|')]


def headline_row(rows: List[Dict], setting: str, comparison: str) -> List[str]:
    """Seeds, the paired difference with its interval, and the paper's difference, of 'a − b' on a setting."""
    a, b = comparison.split(' − ')
    b = b[1:-1] if b.startswith('(') and b.endswith(')') else b
    diffs = paired_diffs({(r['method'], r['seed']): r['top1'] for r in rows if r['setting'] == setting}, a, b)
    paper, deltas = SETTINGS[setting].paper, SETTINGS[setting].paper_deltas
    delta = (f'{paper[a] - paper[b]:+.2f}' if a in paper and b in paper
             else f'{deltas[(a, b)]:+.2f}' if (a, b) in deltas else '-')
    return [str(len(diffs)), paired_interval(diffs), delta]


def levels_row(rows: List[Dict], setting: str, method: str) -> List[str]:
    """Seeds, top-1 and ECE (mean ± std), the paper's top-1 and the published ResNet-32 top-1 of the same loss."""
    runs = [r for r in rows if r['setting'] == setting and r['method'] == method]
    paper, published = SETTINGS[setting].paper.get(method), published_top1(setting, method)
    return [str(len(runs)), mean_std([r['top1'] for r in runs]), mean_std([r['ece'] for r in runs]),
            '-' if paper is None else f'{paper}', '-' if published is None else f'{published}']


def refresh_table(table: str, row_cells: Callable[[str, str], List[str]]) -> str:
    """A table with every body row's cells after its first two recomputed."""
    lines = table.split('\n')
    for i, line in enumerate(lines):
        if line.startswith('|') and i >= 2 and not set(line) <= set('|-'):
            first, second, *_ = cells(line)
            if first not in SETTINGS:
                fail(f'a table row names {first!r}, which is not a setting of benchmarks/suite.py')
            lines[i] = '| ' + ' | '.join([first, second, *row_cells(first, second)]) + ' |'
    return '\n'.join(lines)


def refresh_page(path: str) -> bool:
    """Rewrite the page's tables from their CSVs; whether anything changed."""
    with open(path) as f:
        text = f.read()

    def one(match: re.Match) -> str:
        opening, kind, csv_path, recipe, table, closing = match.groups()
        all_rows = read_rows(os.path.join(ROOT, csv_path))
        if kind == 'survival':
            body = [line for line in survival(all_rows).splitlines() if line.startswith('|')]
            return opening + '\n'.join(body) + '\n' + closing
        rows = [r for r in all_rows if r['recipe'] == recipe and not is_schedule_check(r)
                and r['model'] == DEFAULT_MODEL]
        row_cells = headline_row if kind == 'headline' else levels_row
        return opening + refresh_table(table, lambda setting, name: row_cells(rows, setting, name)) + closing

    new = BLOCK.sub(one, text)
    if new != text:
        with open(path, 'w') as f:
            f.write(new)
    return new != text


def main(argv=None) -> int:
    pages = (argv if argv is not None else sys.argv[1:]) or [os.path.join(ROOT, 'README.md')]
    for page in pages:
        if not os.path.exists(page):
            fail(f'{page}: no such page')
        print(f'{page}: {"tables refreshed" if refresh_page(page) else "up to date"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
