"""Errors a user can cause and fix.

The CLI prints a :class:`UserError` as one line and exits with code 2; any other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix (bad path, wrong dataset, stale cache, bad value).

    The message names the thing and the fix, e.g.
    ``"no beton files in /tmp/x: run `fasttarget convert cifar10 --out /tmp/x` first"``.
    """
