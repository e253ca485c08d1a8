"""The ``fasttarget`` command line: a thin typer app over the library.

Each command group lives in its own module (``fasttarget.cli.<name>``) that defines
``register(app)``; this module only wires them and turns :class:`UserError` into one
line on stderr and exit code 2.

Startup: ``fasttarget --help``, option parsing and the user errors found while parsing must
not wait for torch, ffcv or numba (seconds to import). Command modules therefore import only
typer and light fasttarget modules (:mod:`fasttarget.choices`, :mod:`fasttarget.config`,
:mod:`fasttarget.errors`) at their top and the library inside each command function. A command
reads ``--data``'s ``meta.json`` first (:func:`fasttarget.cli.options.dataset_meta`) and builds
its config, which checks every value, before it imports the library that acts on it.
``tests/test_startup.py`` checks that ``--help`` and such errors leave torch, ffcv and numba
unimported.
"""

from __future__ import annotations

import importlib
import sys

import typer

from fasttarget.errors import UserError

app = typer.Typer(
    name="fasttarget",
    help="Data loading and soft-target caching for image-classification training (Strategies A/B/C).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help and usage errors: typer's rich formatting imports rich and markdown-it,
    # which took most of `fasttarget --help`'s time once the library imports were deferred.
    rich_markup_mode=None,
)

# Command modules, in the order their commands appear in --help.
_COMMAND_MODULES = (
    "data",
    "train",
    "cache",
    "bench",
    "sweep",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(f"fasttarget.cli.{_name}").register(app)


def main() -> None:
    """Entry point of the ``fasttarget`` console script."""
    try:
        app(standalone_mode=True)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
