"""The jail program's first act: tell the worker it runs, before any scene code or media.

The worker reads one byte on the pipe named by ``JAIL_READY_FD``. A jail whose pipe stays
silent never started its program, which is the only failure the worker may blame on the
platform (workers/outcomes.py): everything after this byte is the scene's.
"""

from __future__ import annotations

import os


def signal_started() -> None:
    """One byte on the ready pipe, then the pipe is closed (the scene never sees it)."""
    fd = os.environ.pop("JAIL_READY_FD", "")
    if fd.isdigit():
        try:
            os.write(int(fd), b"1")
        finally:
            os.close(int(fd))
