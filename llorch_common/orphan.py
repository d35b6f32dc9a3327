"""No orphans: a child process that must not outlive the process that started it (Linux).

The kernel sends a child its parent-death signal (`prctl(PR_SET_PDEATHSIG)`) when the parent
dies; the child sets it itself, once it runs. A parent that died before that would go
unnoticed, so the parent names itself (PARENT_PID_ENV, or an argument) and the child, once the
signal is set, checks that it still has that parent, and signals itself if not. Setting the
signal from the parent between fork and exec (subprocess's `preexec_fn`) is not safe in a
process with threads, which every llorch process is.

A program that cannot set it itself (nats-server) is started through this module:
`python -m llorch_common.orphan SIGNAL PARENT_PID PROGRAM ARGS...` sets the signal, checks the
parent and execs PROGRAM, which keeps the signal (`exec_argv` builds that command line).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence

PARENT_PID_ENV = "LLORCH_PARENT_PID"  # set by a parent for the child it starts
_PR_SET_PDEATHSIG = 1


def parent_env() -> dict[str, str]:
    """What a parent adds to its child's environment: its own pid."""
    return {PARENT_PID_ENV: str(os.getpid())}


def parent_from_env(environ: Mapping[str, str] = os.environ) -> int | None:
    value = environ.get(PARENT_PID_ENV, "")
    return int(value) if value.isdigit() else None


def signal_when_parent_dies(sig: signal.Signals, parent: int | None) -> None:
    """`sig` for this process when its parent dies; at once if `parent` (its pid, when the
    parent said it) has died already. A no-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent is not None and os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), sig)


def exec_argv(sig: signal.Signals, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` with `sig` when the calling process dies."""
    return [sys.executable, "-m", "llorch_common.orphan", sig.name, str(os.getpid()), *argv]


def main(args: Sequence[str]) -> None:
    name, parent, *argv = args
    signal_when_parent_dies(signal.Signals[name], int(parent))
    os.execv(argv[0], argv)  # the parent-death signal survives exec


if __name__ == "__main__":
    main(sys.argv[1:])
