"""File names that are not UTF-8 (a Latin-1 ``é`` from an old instrument) work end to end.

Linux file names are bytes; flowmake keeps them (Python's surrogateescape) through digests, keys,
the store, locks, commands and everything it prints. stdout is run strict here (PYTHONIOENCODING,
as in a UTF-8 locale), so nothing passes only because the C locale forgives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import Flow

CAFE = b"caf\xe9"  # Latin-1 "café": not valid UTF-8
FLOWFILE = """
    SAMPLES, = glob_wildcards("raw/{sample}.txt")
    rule all:
        input: expand("up/{sample}.txt", sample=sorted(SAMPLES)), "tree", "listing.txt"
    rule up:
        input: "raw/{sample}.txt"
        output: "up/{sample}.txt"
        shell: "tr a-z A-Z < {input} > {output}"
    rule tree:
        input: expand("up/{sample}.txt", sample=sorted(SAMPLES))
        output: directory("tree")
        shell: "mkdir -p {output} && cp {input} {output}/"
    rule listing:
        input: "tree"
        output: "listing.txt"
        run:
            import os
            with open(output[0], "w", errors="surrogateescape") as f:
                f.write("\\n".join(sorted(os.listdir(input[0]))) + "\\n")
"""


def run(flow: Flow, *args: str | bytes) -> tuple[bytes, bytes]:
    env = {**flow.env(), "PYTHONIOENCODING": "utf-8"}
    res = subprocess.run([sys.executable, "-m", "flowmake", *args], cwd=flow.root, capture_output=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")
    return res.stdout, res.stderr


def test_latin1_file_names_build_skip_and_report(flow: Flow) -> None:
    flow.write(FLOWFILE)
    raw = os.fsencode(flow.root / "raw")
    os.mkdir(raw)
    with open(os.path.join(raw, CAFE + b".txt"), "wb") as f:
        f.write(b"espresso\n")
    with open(os.path.join(raw, b"plain.txt"), "wb") as f:
        f.write(b"tea\n")

    _, err = run(flow, "-c", "2", "-p")
    assert b"up/" + CAFE + b".txt" in err, "progress shows the name with its own bytes"
    up = os.fsencode(flow.root / "up")
    assert sorted(os.listdir(up)) == [CAFE + b".txt", b"plain.txt"]
    with open(os.path.join(up, CAFE + b".txt"), "rb") as f:
        assert f.read() == b"ESPRESSO\n"
    assert sorted(os.listdir(os.fsencode(flow.root / "tree"))) == [CAFE + b".txt", b"plain.txt"]
    with open(flow.root / "listing.txt", "rb") as f:
        assert f.read() == CAFE + b".txt\nplain.txt\n"

    _, err = run(flow, "-c", "2")
    assert b"0 steps ran" in err, "a second run reruns nothing"

    out, _ = run(flow, "-n", "--json")
    assert json.loads(out) == {"steps": []}
    os.unlink(os.path.join(up, CAFE + b".txt"))
    out, _ = run(flow, "-n", "--json")
    out.decode("ascii")  # JSON stays ASCII: the name is escaped, a Python reader gets it back exactly
    planned = json.loads(out)["steps"]
    assert [os.fsencode(o) for o in planned[0]["outputs"]] == [b"up/" + CAFE + b".txt"]
    run(flow, "-c", "2")

    out, _ = run(flow, "--why", b"up/" + CAFE + b".txt")
    assert out.startswith(b"up/" + CAFE + b".txt\n"), out
    assert b"raw/" + CAFE + b".txt" in out and b"up to date" in out, out
    out, _ = run(flow, "--summary")
    assert b"up/" + CAFE + b".txt\t" in out, out
    out, _ = run(flow, "-n")
    assert b"Nothing to do" in out, out
