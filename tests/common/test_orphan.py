"""llorch_common.orphan: a child dies with its parent, also one that died before the child asked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from llorch_common import orphan

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")


def test_the_parent_is_read_from_the_environment() -> None:
    assert orphan.parent_from_env(orphan.parent_env()) == os.getpid()
    assert orphan.parent_from_env({}) is None
    assert orphan.parent_from_env({orphan.PARENT_PID_ENV: "junk"}) is None


@linux
def test_the_step_execs_the_program_while_its_parent_lives() -> None:
    argv = orphan.exec_argv(signal.SIGTERM, ["/bin/echo", "hello"])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "hello\n")


@linux
def test_a_parent_dead_before_the_child_asked_is_noticed() -> None:
    """The step names a parent it does not have (as if it had died and the step been
    re-parented): it signals itself instead of running the program."""
    argv = [sys.executable, "-m", "llorch_common.orphan", "SIGTERM", "1", "/bin/echo", "ran"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (-signal.SIGTERM, "")


@linux
def test_the_program_dies_with_a_killed_parent() -> None:
    """A parent started through the step runs `sleep`; SIGKILL the parent: `sleep` gets SIGTERM."""
    parent_code = (
        "import signal, subprocess, sys, time\n"
        "from llorch_common import orphan\n"
        "p = subprocess.Popen(orphan.exec_argv(signal.SIGTERM, ['/bin/sleep', '60']))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.5)  # let the step exec `sleep`
        with open(f"/proc/{child}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == b"/bin/sleep"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def _alive(pid: int) -> bool:
    """Running (a zombie waits for its new parent to reap it: it is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
