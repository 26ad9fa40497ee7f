"""Commands longer than the kernel takes as arguments run all the same on the local backend.

One argument may hold 128 KiB (MAX_ARG_STRLEN), all of them with the environment ARG_MAX (2 MiB on
Linux); a rule over thousands of inputs renders a command past both.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import Flow

N = 20_000  # "in/sample_00000.txt " x 20,000: a 400 KB command, a cat of 20,000 arguments
LONG = 3_000_000  # one 3 MB word, past ARG_MAX: only a shell builtin can take it


@pytest.mark.slow
def test_a_command_past_the_argument_limits_runs_and_gives_the_right_output(flow: Flow) -> None:
    flow.write(f"""
        rule all:
            input: "cat.txt", "count.txt", "count_run.txt"
        rule cat_all:
            input: expand("in/sample_{{i:05d}}.txt", i=range({N}))
            output: "cat.txt"
            shell: "cat {{input}} > {{output}}"
        rule count:
            output: "count.txt"
            params: word="y" * {LONG}
            shell: "printf %s {{params.word}} | wc -c > {{output}}"
        rule count_run:
            output: "count_run.txt"
            params: word="y" * {LONG}
            run:
                shell("printf %s {{params.word}} | wc -c > {{output}}")
    """)
    (flow.root / "in").mkdir()
    for i in range(N):
        (flow.root / "in" / f"sample_{i:05d}.txt").write_text(f"{i}\n")
    err = flow.ok("-c", "2")
    assert "3 steps ran" in err, err
    assert flow.read("cat.txt") == "".join(f"{i}\n" for i in range(N))
    assert int(flow.read("count.txt")) == LONG
    assert int(flow.read("count_run.txt")) == LONG, "shell() in a run: block too"
    logs = [n for _, _, names in os.walk(flow.root / ".flowmake") for n in names]
    assert not [n for n in logs if n.endswith(".sh")], "the script files are removed after the jobs"
    assert flow.planned() == [], "a second run has nothing to do"
