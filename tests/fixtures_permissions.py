"""A folder a process may not read, for tests that may run as root: root reads any folder whatever its mode."""

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

_WITHOUT_READ_OVERRIDE = [
    "setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search",
]


@contextmanager
def locked(directory: Path):
    """`directory` with every permission taken off, given back afterwards (or a non-root run could not clean up)."""
    directory.chmod(0)
    try:
        yield directory
    finally:
        directory.chmod(0o755)


def command_prefix_denied(locked_directory: Path) -> list[str]:
    """What to put before a command so that it meets `locked_directory` as a ranker run as a non-root user does (k8s
    `runAsUser`): unable to read it. As root, that drops the two capabilities that let root read any folder; where
    setpriv cannot, the test is skipped."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a folder without permissions is read all the same")
    dropped = subprocess.run([*_WITHOUT_READ_OVERRIDE, "true"]).returncode == 0
    if not dropped or subprocess.run([*_WITHOUT_READ_OVERRIDE, "test", "-r", str(locked_directory)]).returncode == 0:
        pytest.skip("setpriv could not drop CAP_DAC_OVERRIDE here: a folder without permissions is read all the same")
    return _WITHOUT_READ_OVERRIDE
