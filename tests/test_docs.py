"""The README stays true: its links, Python blocks, commands and headline numbers; and docs/'s links.

- Every relative link and image of README.md and docs/*.md names a file of the checkout, and an
  anchor (``page.md#heading``) names a heading of that page.
- Every Python block of the README runs, on a small generated Fashion-MNIST where it reads
  Fashion-MNIST (the real one trains in tests/test_learning.py), and a block that trains makes its
  loss fall; a block that needs other data that is not here is skipped.
- The README's commands exist: each ``make`` target is in the Makefile, each ``python`` entry point
  answers ``--help``, each ``hparams/`` file it names is there.
- Each headline table (converged runs, quick suite) is the CSV it came from: each row is recomputed
  from benchmarks/results/*.csv; so is the converged levels table, beside the paper's and the
  published figures the benchmarks record, and the table of which quick-suite conclusions survive
  convergence is the report's.
"""
import contextlib
import io
import os
import re
import runpy
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
DOCS = ROOT / 'docs'
PAGES = [README, *sorted(DOCS.glob('*.md'))]
FASHION_MNIST = '/usr/share/datasets/fashion-mnist'

sys.path.insert(0, str(ROOT / 'benchmarks'))
import cifar  # noqa: E402
import suite  # noqa: E402
import cifar_converged  # noqa: E402
from stats import mean_std, paired_diffs, paired_interval  # noqa: E402


# ----------------------------------------------------------------------------- reading Markdown

FENCE = re.compile(r'^```([^\n`]*)\n(.*?)^```[ \t]*$', re.S | re.M)
INLINE_CODE = re.compile(r'`[^`\n]+`')
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$', re.M)


def code_blocks(text, *languages):
    return [body for lang, body in FENCE.findall(text) if lang.strip() in languages]


def prose(text):
    """The text without its fenced blocks and inline code: what links and headings are read from."""
    return INLINE_CODE.sub('code', FENCE.sub('', text))


def anchors(text):
    """GitHub's anchor of each heading: lower case, punctuation dropped, spaces to hyphens, -1, -2 ... for repeats."""
    seen, slugs = {}, set()
    for _, title in HEADING.findall(FENCE.sub('', text)):
        title = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', title).replace('`', '')
        slug = re.sub(r'[^\w\- ]', '', title.strip().lower()).replace(' ', '-')
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f'{slug}-{n}')
    return slugs


def links(page):
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r'[a-z][a-z0-9+.-]*:', target)]  # http:, https:, mailto: are not checked here


# ----------------------------------------------------------------------------- links

def test_readme_is_a_front_page_that_links_every_docs_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f'README.md has {len(lines)} lines; the details belong in docs/'
    linked = {os.path.normpath(t.split('#')[0]) for t in links(README)}
    unlinked = [p.name for p in PAGES[1:] if os.path.relpath(p, ROOT) not in linked]
    assert not unlinked, f'docs pages the README does not link: {unlinked}'


@pytest.mark.parametrize('page', PAGES, ids=[os.path.relpath(p, ROOT) for p in PAGES])
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition('#')
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or ROOT not in (file, *file.parents):
            broken.append(f'{target}: no such file in the checkout')
        elif anchor and file.suffix == '.md' and anchor not in anchors(file.read_text()):
            broken.append(f'{target}: no heading with that anchor in {os.path.relpath(file, ROOT)}')
    assert not broken, f'{os.path.relpath(page, ROOT)}: ' + '; '.join(broken)


def test_the_cifar_report_is_spliced_into_a_docs_page_with_its_markers():
    make = (ROOT / 'Makefile').read_text()
    target = re.search(r'benchmarks/cifar\.py --report --readme (\S+)', make).group(1)
    assert target.startswith('docs/'), f'make cifar splices the report into {target}, not a docs page'
    text = (ROOT / target).read_text()
    for stem in cifar.REPORTS:
        start, end = f'<!-- {stem}.md -->', f'<!-- /{stem}.md -->'
        assert text.count(start) == text.count(end) == 1 and text.index(start) < text.index(end), stem
        assert start not in README.read_text()


# ----------------------------------------------------------------------------- the Python blocks

def write_fashion_mnist(folder, n_train=2048, n_test=20):
    """Debian's layout (gzipped IDX files), with images a model learns at once: noise, and a bright band
    of two rows whose height is the class. 2048 training images: 32 batches of 64, more than the
    README's loop takes (31 steps)."""
    from test_datasets import write_idx
    rng = np.random.default_rng(0)
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 100, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 4 + 2 * label:6 + 2 * label] = 255
        write_idx(str(folder / f'{prefix}-images-idx3-ubyte'), images, gz=True)
        write_idx(str(folder / f'{prefix}-labels-idx1-ubyte'), labels, gz=True)


PYTHON_BLOCKS = code_blocks(README.read_text(), 'python')


def test_the_readme_has_python_blocks():
    assert PYTHON_BLOCKS, 'README.md has no ```python block'


@pytest.mark.parametrize('index', range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, capsys):
    code = PYTHON_BLOCKS[index]
    if FASHION_MNIST in code:
        write_fashion_mnist(tmp_path / 'fashion-mnist')
        code = code.replace(FASHION_MNIST, str(tmp_path / 'fashion-mnist'))
    for path in re.findall(r"""['"]((?:/|~/)[^'"]+)['"]""", code):
        if not os.path.exists(os.path.expanduser(path)):
            pytest.skip(f'README block {index + 1} needs {path}, which is not here')
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)  # the model's initial weights and the loader's order
    np.random.seed(0)  # the mixer's lambdas
    namespace = {'__name__': '__main__'}
    exec(compile(code, f'README.md, python block {index + 1}', 'exec'), namespace)
    if 'optimizer' in code or 'losses' in namespace:  # a block that trains: its loss falls, step by step, in `losses`
        losses = namespace.get('losses')
        assert losses and len(losses) >= 20, f'README block {index + 1} trains but keeps no `losses` list of 20+ steps'
        first, last = np.mean(losses[:5]), np.mean(losses[-5:])
        # On these images the mean of the last 5 steps' losses is 0.47-0.49 of the first 5's (seeds 0, 1, 2:
        # 8.3 -> 3.9); without optimizer.step() it is 0.995-1.002.
        assert last < 0.6 * first, (f'README block {index + 1}: the loss did not fall: mean of the first 5 steps '
                                    f'{first:.3f}, of the last 5 {last:.3f}')


# ----------------------------------------------------------------------------- the commands

def commands():
    """Each shell command of the README: its bash blocks' lines (continuations joined) and inline code."""
    text = README.read_text()
    lines = []
    for block in code_blocks(text, 'bash', 'sh', 'shell'):
        lines += [line for line in block.replace('\\\n', ' ').splitlines() if line.strip()]
    lines += [span.strip('`') for span in INLINE_CODE.findall(FENCE.sub('', text))]
    return [shlex.split(line, comments=True) for line in lines]


def entry_points():
    """('script', path) or ('module', name) of every ``python``/``torchrun`` command of the README."""
    found = set()
    for words in commands():
        for i, word in enumerate(words):
            if word not in ('python', 'python3', 'torchrun'):
                continue
            rest = words[i + 1:]
            while word == 'torchrun' and rest and rest[0].startswith('--') and rest[0] != '-m':
                rest = rest[2:] if '=' not in rest[0] and len(rest) > 1 else rest[1:]
            if rest[:1] == ['-m'] and len(rest) > 1:
                found.add(('module', rest[1]))
            elif rest and rest[0].endswith('.py'):
                found.add(('script', rest[0]))
            break
    return sorted(found)


def test_readme_make_targets_exist():
    targets = set(re.findall(r'^([\w.-]+):', (ROOT / 'Makefile').read_text(), re.M))
    wanted = {words[1] for words in commands() if len(words) > 1 and words[0] == 'make'}
    assert {'test', 'demo'} <= wanted, 'the README names `make test` and `make demo`'
    assert wanted <= targets, f'make targets the Makefile lacks: {sorted(wanted - targets)}'


def test_readme_hparams_files_exist():
    named = set(re.findall(r'hparams/[\w/.-]+\.yaml', README.read_text()))
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f'the README names hparams files that are not there: {missing}'


def test_readme_names_its_entry_points():
    assert ('script', 'train_icm.py') in entry_points() and ('module', 'timm_icm.launch') in entry_points()


@pytest.mark.parametrize('kind,name', entry_points(), ids=[n for _, n in entry_points()])
def test_readme_entry_point_answers_help(kind, name, monkeypatch):
    """``python NAME --help`` in this process (the imports are paid once): usage on stdout, exit code 0."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_, warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # runpy: the module was imported before
        if kind == 'module':
            monkeypatch.setattr(sys, 'argv', [name, '--help'])
            runpy.run_module(name, run_name='__main__', alter_sys=True)
        else:
            path = ROOT / name
            if not path.is_file():
                pytest.fail(f'the README runs {name}, which is not in the checkout')
            monkeypatch.setattr(sys, 'argv', [str(path), '--help'])
            monkeypatch.syspath_prepend(str(path.parent))
            runpy.run_path(str(path), run_name='__main__')
    assert exit_.value.code in (0, None), f'{name} --help: exit code {exit_.value.code}'
    assert 'usage' in out.getvalue().lower(), f'{name} --help printed no usage'


# ----------------------------------------------------------------------------- the headline numbers

HEADLINE = re.compile(r'<!-- headline: (\S+), recipe (\w+) -->\n(.*?)<!-- /headline -->', re.S)


@pytest.mark.parametrize('page, recipe', [(README, 'long'), (DOCS / 'cifar.md', 'cpu')])
def test_headline_table_is_the_csv_it_came_from(page, recipe):
    """Every headline table (the converged runs' in the README, the quick suite's in docs/cifar.md) is recomputed
    from its CSV, and the text between it and the table before names its recipe."""
    text = page.read_text()
    matches = list(HEADLINE.finditer(text))
    assert recipe in [m.group(2) for m in matches], f'{page.name} has no <!-- headline: CSV, recipe {recipe} --> table'
    wrong, previous_end = [], 0
    for match in matches:
        csv_path, recipe, table = match.groups()
        assert f'`{recipe}` recipe' in text[previous_end:match.start()], \
            f'the README does not say that the headline table at offset {match.start()} is the {recipe} recipe'
        previous_end = match.end()
        rows = [r for r in suite.read_rows(str(ROOT / csv_path))
                if r['recipe'] == recipe and not suite.is_schedule_check(r)]  # the half-schedule run is no cell
        body = [line for line in table.splitlines() if line.startswith('|')][2:]
        assert body, f'the {recipe} headline table has no rows'
        for line in body:
            setting, comparison, seeds, difference, paper = [c.strip() for c in line.strip('|').split('|')]
            a, b = comparison.split(' − ')
            b = b[1:-1] if b.startswith('(') and b.endswith(')') else b
            assert setting in suite.SETTINGS, f'{setting!r} is not a setting of benchmarks/cifar.py'
            by_seed = {(r['method'], r['seed']): r['top1'] for r in rows if r['setting'] == setting}
            diffs = paired_diffs(by_seed, a, b)
            numbers, deltas = suite.SETTINGS[setting].paper, suite.SETTINGS[setting].paper_deltas
            delta = (f'{numbers[a] - numbers[b]:+.2f}' if a in numbers and b in numbers
                     else f'{deltas[(a, b)]:+.2f}' if (a, b) in deltas else '-')
            expected = [str(len(diffs)), paired_interval(diffs), delta]
            if [seeds, difference, paper] != expected:
                wrong.append(f'{recipe}, {setting}, {comparison}: README {[seeds, difference, paper]}, '
                             f'{csv_path} {expected}')
    assert not wrong, 'the headline table differs from its CSV:\n' + '\n'.join(wrong)


LEVELS = re.compile(r'<!-- levels: (\S+), recipe (\w+) -->\n(.*?)<!-- /levels -->', re.S)


def levels_row(rows, setting, method):
    """A levels-table row's cells after its first two: seeds, top-1 and ECE (mean ± std), the paper's top-1 and
    the published ResNet-32 top-1 of the same loss."""
    runs = [r for r in rows if r['setting'] == setting and r['method'] == method]
    paper = suite.SETTINGS[setting].paper.get(method)
    published = cifar_converged.published_top1(setting, method)
    return [str(len(runs)), mean_std([r['top1'] for r in runs]), mean_std([r['ece'] for r in runs]),
            '-' if paper is None else f'{paper}', '-' if published is None else f'{published}']


def test_readme_levels_table_is_the_csv_it_came_from():
    """The converged levels (top-1 and ECE per method) are cifar.csv's, the paper's and the published figures."""
    text = README.read_text()
    match = LEVELS.search(text)
    assert match, 'README.md has no <!-- levels: CSV, recipe R --> table'
    csv_path, recipe, table = match.groups()
    rows = [r for r in suite.read_rows(str(ROOT / csv_path))
            if r['recipe'] == recipe and not suite.is_schedule_check(r)]
    body = [line for line in table.splitlines() if line.startswith('|')][2:]
    assert body, 'the levels table has no rows'
    wrong = []
    for line in body:
        setting, method, *cells = [c.strip() for c in line.strip('|').split('|')]
        expected = levels_row(rows, setting, method)
        if cells != expected:
            wrong.append(f'{setting}, {method}: README {cells}, {csv_path} {expected}')
    assert not wrong, 'the levels table differs from its CSV:\n' + '\n'.join(wrong)


SURVIVAL = re.compile(r'<!-- survival: (\S+) -->\n(.*?)<!-- /survival -->', re.S)


def test_readme_survival_table_is_the_report_of_its_csv():
    """The README's "which conclusions survive" table is the report's, row for row, for the CSV it names."""
    match = SURVIVAL.search(README.read_text())
    assert match, 'README.md has no <!-- survival: CSV --> table'
    csv_path, table = match.groups()
    expected = [line for line in cifar_converged.survival(suite.read_rows(str(ROOT / csv_path))).splitlines()
                if line.startswith('|')]
    readme = [line for line in table.splitlines() if line.startswith('|')]
    assert readme == expected, ('the survival table differs from benchmarks/cifar_converged.survival of '
                                f'{csv_path}:\nREADME:\n' + '\n'.join(readme) + '\nexpected:\n' + '\n'.join(expected))
