"""Argument types and the help format shared by the command-line tools."""
import argparse
import json
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default and keeps the tool's docstring as written.

    Options whose help already says what the default means, or whose default is None or False, show no
    ``(default: ...)`` of argparse's.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        if '(default' in (action.help or '') or action.default in (None, False):
            return action.help or ''
        return super()._get_help_string(action)


def image_size(text: str) -> tuple[int, int]:
    """``'HxW'`` (or ``'N'`` for a square) -> ``(H, W)``, for ``type=`` of an argparse option."""
    try:
        sides = tuple(int(side) for side in text.lower().split('x'))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f'an image size is HxW with positive integer sides (e.g. 800x1216) or '
                                         f'one side for a square, got {text!r}')
    return (sides[0], sides[-1])


def pruning_ratios(text: str, named: Callable[[], dict[str, list]] | None = None) -> float | list:
    """Pruning ratios from the command line: a float, JSON with one entry per stage, or a name of ``named()``
    (called only for a name, e.g. ``plugin.models.utils.sparsity.paper_pruning_ratios``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        names = named() if named else {}
        if text in names:
            return names[text]
        listed = f', or one of {sorted(names)}' if names else ''
        raise argparse.ArgumentTypeError(
            f'pruning ratios must be JSON, a float or a list with one float or list of per-block ratios per '
            f'stage, e.g. 0.5 or [[0.3,0.3],[0,0],[0.1,0.1,0.2,0.2,0.2,0.2],[0,0]]{listed}; got {text!r} ({error})')


# What a user's input can cause: the tools report these as one line, not a traceback.
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, pickle.UnpicklingError)


def run_tool(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a tool's ``main(argv)``; a bad input ends it with ``error: <message>`` and exit status 2, as
    argparse does (``EFFIDENSE_TRACEBACK=1`` shows the traceback instead). The exit status is otherwise 0, or
    the int ``main`` returns (a check that found a difference: tools/check_equivalence.py returns 1)."""
    try:
        result = main(argv)
    except USER_ERRORS as error:
        if os.environ.get('EFFIDENSE_TRACEBACK'):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f'{Path(sys.argv[0]).name}: error: {message}', file=sys.stderr)
        return 2
    return result if type(result) is int else 0
