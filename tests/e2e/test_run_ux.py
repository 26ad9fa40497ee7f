"""What a person sees: progress lines, the live status on a terminal, -p, the summary, exit codes."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from tests.conftest import Flow

TWO = """
    rule all:
        input: "b"
    rule a:
        output: "a"
        shell: "echo a > {output}"
    rule b:
        input: "a"
        output: "b"
        shell: "sleep 0.3; cat {input} > {output}"
"""


def test_plain_lines_when_not_a_terminal_and_a_final_summary(flow: Flow) -> None:
    flow.write(TWO)
    err = flow.ok("-c", "1")
    assert "\x1b[" not in err and "\r" not in err, "no terminal control codes in a log file"
    assert "[1/2] a: a  (output missing: a)" in err
    assert "[2/2] b: b  (output missing: b)" in err
    assert re.search(r"^2 steps ran in \d+\.\d s; \d+ files? hashed$", err, re.M), err
    assert "early cutoff" not in err, "a rule without outputs is not an early cutoff"


def test_p_prints_the_commands(flow: Flow) -> None:
    flow.write(TWO)
    err = flow.ok("-c", "1", "-p")
    assert "    echo a > a\n" in err
    assert "    sleep 0.3; cat a > b\n" in err


def test_live_status_line_on_a_terminal(flow: Flow) -> None:
    flow.write(TWO)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "flowmake", "-c", "1"], cwd=flow.root, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave, env=flow.env())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=30) == 0
    screen = b"".join(chunks).decode()
    assert "\r\x1b[K" in screen, "the status line is redrawn in place"
    assert re.search(r"\d/2 done, 1 running, 0 failed", screen), screen
    assert "2 steps ran" in screen


def test_exit_codes(flow: Flow) -> None:
    flow.write(TWO)
    assert flow.run("-c", "1")[0] == 0
    flow.write("""
        rule a:
            output: "a"
            shell: "exit 7"
    """)
    rc, _, err = flow.run("-c", "1")
    assert rc == 1, err
    assert "FAILED a:a: exit code 7" in err
    rc, _, err = flow.run("-c", "1", "no-such-target")
    assert rc == 2, err
    assert "Traceback" not in err
    flow.write("rule a:\n    output: 'a'\n    shell 'broken'\n")
    assert flow.run("-c", "1")[0] == 2
    assert flow.run("--cores", "0")[0] == 2


def test_a_reader_that_stops_early_ends_the_listing_quietly(flow: Flow) -> None:
    # `flowmake -n | head`: the closed pipe is the reader's choice, not a crash.
    flow.write("""
        rule all:
            input: expand("o/{i}.txt", i=range(3000))
        rule x:
            output: "o/{i}.txt"
            shell: "touch {output}"
    """)
    proc = flow.popen("-n")
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith("rule x:")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "internal error" not in err
