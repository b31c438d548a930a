"""Operator mistakes on the command line get one line saying what to fix, never a traceback, and no work is done first."""

import signal
import subprocess
import sys
import time

import pytest

from tests.servers import REPO, free_port


def whisperlite(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "whisperlite", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ingest", "--data", ".", "--retries", "-1"], 2, "argument --retries: must be at least 0, got -1"),
        (["ingest", "--data", ".", "--batch-size", "0"], 2, "argument --batch-size: must be at least 1, got 0"),
        (["recommend", "--query", "boots", "-k", "0"], 2, "argument -k: must be at least 1, got 0"),
        (["catalog", "import", "pyproject.toml", "--batch-size", "0"], 2, "argument --batch-size: must be at least 1, got 0"),
        (["recommend", "--query", "boots", "--request-id", "two words", "--ranker", "127.0.0.1:1"], 1, "error: request_id: must be 1 to 128"),
        (["recommend", "--query", "boots", "-k", "99999999999", "--ranker", "127.0.0.1:1"], 2, "argument -k: must be at most 2147483647, got 99999999999"),
        (["recommend", "--query", "boots\udcff", "--ranker", "127.0.0.1:1"], 2, "argument --query: not UTF-8 text (byte 0xff at character 6)"),
        (["model", "--ranker", "127.0.0.1:1", "traffic", "--percent", "50"], 1, "traffic: --percent and --shadow need --candidate VERSION"),
        (["model", "--ranker", "127.0.0.1:1", "traffic", "--clear", "--candidate", "v1"], 1, "traffic: --clear takes no other flag"),
        (["evaluate", "--all", "--data", ".", "--data-root", "/nonexistent"], 2, "give --data or --all, not both"),
        (["evaluate", "--data", ".", "--out", "x", "--methods", ""], 2, "--methods: name at least one of"),
        (["recommend", "--query", "boots", "--token", "t\u00f6ken-0123456789"], 1, "--token: must be printable ASCII without spaces"),
        (["recommend", "--query", "boots", "--tls-ca-file", "pyproject.toml"], 1, "pyproject.toml: not a PEM certificate"),
        (["up", "--port-offset", "15484"], 2, "argument --port-offset: must be at most 15483, got 15484"),
        (["model", "--timeout", "0", "list"], 2, "argument --timeout: must be a positive number of seconds, got '0'"),
        (["model", "--timeout", "nan", "list"], 2, "argument --timeout: must be a positive number of seconds, got 'nan'"),
        (["model", "list", "--timeout", "-1"], 2, "argument --timeout: must be a positive number of seconds, got '-1'"),
        (["model", "--ranker", "127.0.0.1:1", "list", "--ranker", "127.0.0.1:2", "--timeout", "5"], 1, "127.0.0.1:2: Failed to connect"),
        (["recommend", "--query", "boots", "--timeout", "-1"], 2, "argument --timeout: must be a positive number of seconds, got '-1'"),
    ],
    ids=[
        "negative-retries", "zero-batch", "zero-k", "zero-import-batch", "request-id-with-a-space", "k-past-int32", "query-not-utf8", "percent-without-candidate",
        "clear-and-candidate", "all-and-data", "no-methods", "token-not-ascii", "ca-not-pem",
        "port-offset-past-65535", "model-timeout-zero", "model-timeout-nan", "model-timeout-after-the-action",
        "model-ranker-after-the-action-wins", "recommend-timeout-negative",
    ],
)
def test_a_bad_flag_is_one_line_saying_what_to_fix(args, code, message):
    done = whisperlite(*args)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_train_refuses_an_unusable_out_before_training(tmp_path):
    """It trained first (9 minutes on the demo data), then failed writing the model with a traceback."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.csv").write_text("item_id,title\n1,Red dress\n2,Blue shirt\n")
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,1,1\nu1,2,2\nu1,1,3\n")
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    done = whisperlite("train", "--data", str(data), "--out", str(not_a_directory), "--quiet")
    assert done.returncode == 2 and f"error: --out {not_a_directory}: cannot write there (File exists)" in done.stderr
    assert "Traceback" not in done.stderr and "epoch" not in done.stderr
    # Writable by os.access for root, and refused only once the model was trained, as a traceback.
    done = whisperlite("train", "--data", str(data), "--out", "/proc/whisperlite-models", "--quiet")
    assert done.returncode == 2 and "error: --out /proc/whisperlite-models: cannot write there (" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "epoch" not in done.stderr


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.csv").write_text("item_id,title\n1,Red dress\n")
    ingest = subprocess.Popen(
        [sys.executable, "-m", "whisperlite", "ingest", "--data", str(data), "--catalog", f"127.0.0.1:{free_port()}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # it waits up to 15 s to reach a catalog nobody serves
    time.sleep(4)
    ingest.send_signal(signal.SIGINT)
    _, stderr = ingest.communicate(timeout=60)
    assert ingest.returncode == 130, stderr
    assert stderr.strip() == "whisperlite ingest: interrupted"


def test_a_command_pointed_at_another_service_says_so(encoder_service):
    """gRPC's own answer is a bare "UNIMPLEMENTED: Method not found!"."""
    done = whisperlite("catalog", "count", "--catalog", encoder_service.address)
    assert done.returncode == 1
    assert f"({encoder_service.address} does not serve the catalog's API: is it another service's address?)" in done.stderr
    done = whisperlite("recommend", "--query", "boots", "--ranker", encoder_service.address)
    assert done.returncode == 1
    assert f"({encoder_service.address} does not serve the ranker's API: is it another service's address?)" in done.stderr


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`whisperlite model list | head -3` ended in a BrokenPipeError traceback."""
    command = [sys.executable, "-m", "whisperlite", "health", f"127.0.0.1:{free_port()}", "--timeout", "1"]  # prints NOT_SERVING
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the process has written anything
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_an_item_without_a_title_is_shown_by_the_start_of_its_text():
    from whisperlite.shell.cli import _shown_name

    assert _shown_name("Red dress", "long text") == "Red dress"
    assert _shown_name(" ", "A warm\nwool   scarf") == "A warm wool scarf"
    assert _shown_name("", "word " * 40) == ("word " * 16).strip()[:79] + "…"


def test_a_shown_name_writes_control_characters_escaped_never_raw_to_a_terminal():
    """A title's escape sequences cleared the screen and recoloured `recommend`'s output; its carriage return overwrote it."""
    from whisperlite.shell.cli import _shown_name

    spoof = "\x1b[2J\x1b[31mFAKE OUTPUT\x1b[0m\rspoof"
    assert _shown_name(spoof, "") == "\\x1b[2J\\x1b[31mFAKE OUTPUT\\x1b[0m\\rspoof"
    assert _shown_name("", "a\x1b[2Jb \x9b1m") == "a\\x1b[2Jb \\x9b1m"  # the C1 CSI too
    assert _shown_name("Café\tbleu", "") == "Café\\tbleu"
