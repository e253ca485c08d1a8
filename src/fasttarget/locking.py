"""An exclusive lock that stops two processes from writing one output at the same time.

``fasttarget train`` holds one on its run directory and ``fasttarget cache build`` on the
file it writes, for as long as they write. The lock is ``fcntl.flock`` on a small file that
names the holder's pid; it is taken without waiting, so a second writer refuses at once
instead of redoing the work and racing the first one's renames. The kernel releases a lock
when its process ends, however it ends, so a lock file a SIGKILL leaves behind is never
held: the next writer takes it over.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "out.lock"
    >>> with exclusive_lock(path, "another writer holds {path} (pid {pid})"):
    ...     path.read_text().strip() == str(os.getpid())
    True
    >>> path.exists()
    False
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fasttarget.errors import UserError


@contextlib.contextmanager
def exclusive_lock(path: Path, refusal: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Args:
        path: the lock file; it holds the holder's pid while locked and is removed on exit.
        refusal: the message when another process holds the lock; ``{path}`` and ``{pid}``
            (the holder's pid, ``"unknown"`` if it has not written it yet) are filled in.

    Raises:
        UserError: another process holds the lock (raised at once, without waiting).
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(refusal.format(path=path, pid=_holder(path))) from None
        # The previous holder removes the file before it lets go: a lock taken on a file that is no
        # longer at `path` guards nothing, so start over on the file that is there now.
        if _same_file(fd, path):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # Removed while still locked: whoever opened it meanwhile sees it is gone once they lock it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _holder(path: Path) -> str:
    """The pid written in a held lock file (``"unknown"`` in the moment before the holder writes it)."""
    try:
        return path.read_text().strip() or "unknown"
    except FileNotFoundError:
        return "unknown"
