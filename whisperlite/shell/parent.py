"""Services started by `whisperlite up` end with it, even when it is killed without a chance to stop them."""

import ctypes
import os
import signal
import sys

# `up` sets it to its own pid in each service's environment.
EXIT_WITH_PARENT_ENV = "WHISPERLITE_EXIT_WITH_PARENT"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent() -> None:
    """Asks Linux to send this process SIGTERM (a graceful stop) when the parent named by EXIT_WITH_PARENT_ENV dies;
    exits at once when it is already gone. Without it, a SIGKILLed `up` left four services holding their ports."""
    parent = os.environ.pop(EXIT_WITH_PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before the request was made
        sys.exit(f"the `whisperlite up` that started this service (pid {parent}) is gone")
