"""Drift guard: train_icm.py's command line against timm ``train.py``'s.

``tests/cli_drift/timm_train_flags.json`` records timm's flags (facts: option strings, destination, number of
values, default). Each must be offered by train_icm.py's parser (``timm_icm.cli.create_parser``) with
timm's destination, number of values and default, or be listed with the reason in
``tests/cli_drift/train_icm_flag_differences.json``. The list must stay true as well: an entry for a flag
that train_icm.py now offers, or that timm does not have, fails.

For a new timm: record its flags with ``tests/cli_drift/record_timm_train_flags.py``, run this file, and
offer or list what it names.
"""
import argparse
import json
import os
from typing import Any, Dict, List

import pytest

from timm_icm import cli

DATA = os.path.join(os.path.dirname(__file__), 'cli_drift')
DIFFERENCES_FILE = 'tests/cli_drift/train_icm_flag_differences.json'


def _load(name: str) -> Dict[str, Any]:
    with open(os.path.join(DATA, name)) as f:
        return json.load(f)


def flag_name(flag: Dict[str, Any]) -> str:
    """A timm flag's name in the differences file: its first long option, or its destination."""
    long_options = [option for option in flag['options'] if option.startswith('--')]
    return long_options[0] if long_options else flag['dest']


TIMM = _load('timm_train_flags.json')
DIFFERENCES = _load('train_icm_flag_differences.json')
TIMM_FLAGS = {flag_name(flag): flag for flag in TIMM['flags']}
NEWER_FLAGS = {flag['name']: flag for flag in TIMM.get('newer_flags', [])}
NOT_OFFERED = {name: entry['reason'] for entry in DIFFERENCES['not_offered'] for name in entry['flags']}
DIFFERENT_DEFAULT = {entry['flag']: entry for entry in DIFFERENCES['different_default']}


@pytest.fixture(scope='module')
def parser() -> argparse.ArgumentParser:
    return cli.create_parser()


def offered(parser: argparse.ArgumentParser, options: List[str], dest: str) -> List[argparse.Action]:
    """train_icm.py's arguments that take any of ``options``, or for a positional (no options) ``dest``."""
    if options:
        found = [parser._option_string_actions.get(option) for option in options]
        return list({id(action): action for action in found if action is not None}.values())
    return [action for action in parser._actions if not action.option_strings and action.dest == dest]


def same_value(a: Any, b: Any) -> bool:
    """Equal defaults, where True is not 1 and a tuple equals the list of its items (JSON has no tuples)."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) \
            and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _listing_hint(name: str, default: Any) -> str:
    return (f'offer it in timm_icm/cli.py with timm\'s default {default!r}, or list {name!r} under not_offered '
            f'in {DIFFERENCES_FILE} with the reason')


@pytest.mark.parametrize('name', list(TIMM_FLAGS))
def test_timm_flag_is_offered_alike_or_listed(parser: argparse.ArgumentParser, name: str) -> None:
    flag = TIMM_FLAGS[name]
    actions = offered(parser, flag['options'], flag['dest'])
    if name in NOT_OFFERED:
        assert not actions, (f'{name} is listed as not offered, but train_icm.py accepts it now: remove it from '
                             f'not_offered in {DIFFERENCES_FILE} (and check its default against timm\'s)')
        return
    assert actions, f'timm train.py has {name}, train_icm.py does not: {_listing_hint(name, flag["default"])}'
    assert len(actions) == 1, f'{name}: timm\'s option strings {flag["options"]} are split over several flags here'
    action = actions[0]
    missing = [option for option in flag['options'] if option not in action.option_strings]
    assert not missing, f'{name}: train_icm.py lacks timm\'s alias(es) {missing}'
    assert action.dest == flag['dest'], (
        f'{name}: timm stores it as {flag["dest"]!r} (the key in YAML configs and args.yaml), '
        f'train_icm.py as {action.dest!r}')
    assert action.nargs == flag['nargs'], (
        f'{name}: timm takes nargs={flag["nargs"]!r} (0: a switch), train_icm.py nargs={action.nargs!r}')
    ours = parser.get_default(action.dest)
    listed = DIFFERENT_DEFAULT.get(name)
    if listed is None:
        assert same_value(ours, flag['default']), (
            f'{name}: default {ours!r} in train_icm.py, {flag["default"]!r} in timm: use timm\'s, or list it '
            f'under different_default in {DIFFERENCES_FILE} with both values and the reason')
    else:
        assert same_value(listed['timm'], flag['default']) and same_value(listed['train_icm'], ours), (
            f'{name}: {DIFFERENCES_FILE} records defaults timm {listed["timm"]!r} / train_icm.py '
            f'{listed["train_icm"]!r}; they are {flag["default"]!r} / {ours!r} now')
        assert not same_value(ours, flag['default']), (
            f'{name} has timm\'s default now: remove it from different_default in {DIFFERENCES_FILE}')


@pytest.mark.parametrize('name', list(NEWER_FLAGS))
def test_newer_timm_flag_is_offered_or_listed(parser: argparse.ArgumentParser, name: str) -> None:
    """Flags of timm 1.0.31 known by name only (its tests use them): offered, or listed as not offered."""
    flag = NEWER_FLAGS[name]
    accepted = name in parser._option_string_actions or any(a.dest == flag['dest'] for a in parser._actions)
    if name in NOT_OFFERED:
        assert not accepted, (f'{name} is listed as not offered, but train_icm.py accepts it now: remove it from '
                              f'not_offered in {DIFFERENCES_FILE}')
    else:
        assert accepted, f'timm 1.0.31\'s train.py has {name} ({flag["seen_in"]}): {_listing_hint(name, "?")}'


def test_every_listed_difference_is_a_timm_flag_with_a_reason() -> None:
    known = set(TIMM_FLAGS) | set(NEWER_FLAGS)
    listed = [name for entry in DIFFERENCES['not_offered'] for name in entry['flags']] + list(DIFFERENT_DEFAULT)
    assert sorted(set(name for name in listed if name not in known)) == [], \
        f'{DIFFERENCES_FILE} lists flags that timm train.py does not have'
    assert len(listed) == len(set(listed)), f'{DIFFERENCES_FILE} lists a flag twice'
    for entry in DIFFERENCES['not_offered'] + DIFFERENCES['different_default']:
        assert entry['reason'].strip(), f'no reason given for {entry}'


def test_recorded_flags_are_facts_of_one_train_py() -> None:
    """The recording names its source, and each flag once (names and destinations are unique in argparse)."""
    assert TIMM['repository'] == 'huggingface/pytorch-image-models' and len(TIMM['commit']) == 40
    assert len(TIMM_FLAGS) == len(TIMM['flags'])
    assert len({flag['dest'] for flag in TIMM['flags']}) == len(TIMM['flags'])
    assert not set(NEWER_FLAGS) & set(TIMM_FLAGS)


def test_the_guard_notices_a_missing_flag_and_a_changed_default(parser: argparse.ArgumentParser) -> None:
    """The comparison itself: a flag train_icm.py lacks is found, and so is a default that differs."""
    assert offered(parser, ['--no-such-timm-flag'], 'no_such_timm_flag') == []
    (batch_size,) = offered(parser, ['-b', '--batch-size'], 'batch_size')
    assert same_value(parser.get_default(batch_size.dest), TIMM_FLAGS['--batch-size']['default'])
    assert not same_value(parser.get_default(batch_size.dest), TIMM_FLAGS['--batch-size']['default'] + 1)
    assert not same_value(False, 0) and not same_value([0.08, 1.0], [0.08]) and same_value((1, 2), [1, 2])
