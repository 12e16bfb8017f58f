"""Record the flags of a timm ``train.py`` as test data for ``tests/test_cli_drift.py``.

    python tests/cli_drift/record_timm_train_flags.py path/to/timm/train.py --commit SHA --note TEXT \\
        > tests/cli_drift/timm_train_flags.json

Runs only the module-level statements of the given ``train.py`` that build its two parsers (the
``-c/--config`` pre-parser and the main one, before its first ``def``; they need only ``argparse`` and
``timm.utils``) and writes each flag's option strings, destination, number of values and default as
JSON. ``newer_flags`` in the current recording (flags known only from the tests of a later timm) were
added by hand: carry over those the new file still lacks. Then keep
``tests/cli_drift/train_icm_flag_differences.json`` in step (the test says what to change).
"""
import argparse
import ast
import json
import sys
from typing import Any, Dict, List

from timm import utils


# The module-level calls that build train.py's parsers; its other statements (imports, logger) are left out.
PARSER_CALLS = ('ArgumentParser', 'add_argument', 'add_argument_group', 'add_mutually_exclusive_group', 'set_defaults')


def _builds_parser(statement: ast.stmt) -> bool:
    """An assignment or expression made of parser calls only (a stray trailing comma makes a tuple of them)."""
    if not isinstance(statement, (ast.Assign, ast.Expr)):
        return False
    value = statement.value
    calls = value.elts if isinstance(value, ast.Tuple) else [value]
    return all(isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in PARSER_CALLS
               for call in calls)


def parsers_of(train_py_source: str) -> Dict[str, argparse.ArgumentParser]:
    """The parsers that ``train.py`` builds at module level, by name (``config_parser``, ``parser``)."""
    module = ast.parse(train_py_source)
    statements = []
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            break
        if _builds_parser(node):
            statements.append(node)
    namespace: Dict[str, Any] = {'argparse': argparse, 'utils': utils}
    exec(compile(ast.Module(body=statements, type_ignores=[]), 'train.py', 'exec'), namespace)
    return {name: value for name, value in namespace.items() if isinstance(value, argparse.ArgumentParser)}


def flags_of(parser: argparse.ArgumentParser) -> List[Dict[str, Any]]:
    """Option strings (none for a positional), destination, argparse's ``nargs`` (0: a switch without a value,
    None: one value) and default of each argument but --help."""
    flags = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        default = list(action.default) if isinstance(action.default, tuple) else action.default
        flags.append({'options': list(action.option_strings), 'dest': action.dest, 'nargs': action.nargs,
                      'default': default})
    return flags


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument('train_py', help='a timm train.py')
    cli.add_argument('--commit', required=True, help='the pytorch-image-models commit the file is from')
    cli.add_argument('--note', default='', help='where the file comes from, and anything a reader must know')
    args = cli.parse_args()
    with open(args.train_py) as f:
        parsers = parsers_of(f.read())
    config_flags = flags_of(parsers['config_parser'])
    main_flags = flags_of(parsers['parser'])
    record = {
        'about': "timm train.py's command line: each flag's option strings, destination, number of values "
                 "(argparse's nargs: 0 is a switch, null one value) and default. "
                 'Facts recorded by tests/cli_drift/record_timm_train_flags.py; checked by tests/test_cli_drift.py.',
        'repository': 'huggingface/pytorch-image-models',
        'path': 'train.py',
        'commit': args.commit,
        'note': args.note,
        'flags': config_flags + main_flags,
    }
    sys.stdout.write(to_json(record))


def to_json(record: Dict[str, Any]) -> str:
    """Indented JSON with one line per flag, so a diff of two recordings shows the flags that changed."""
    lines = ['{']
    for key, value in record.items():
        if key == 'flags':
            items = ',\n'.join('  ' + json.dumps(flag) for flag in value)
            lines.append(f' {json.dumps(key)}: [\n{items}\n ],')
        else:
            lines.append(f' {json.dumps(key)}: {json.dumps(value, indent=1)},')
    lines[-1] = lines[-1].rstrip(',')
    return '\n'.join(lines) + '\n}\n'


if __name__ == '__main__':
    main()
