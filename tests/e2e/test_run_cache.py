"""The shared cache end to end: real workdirs sharing one directory cache, ``python -m flowmake`` runs.

Two clones of one workflow in different directories stand for two labmates (or CI and a laptop);
``runs.log`` in each records which rules really ran there.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import Flow

CHAIN = """
    rule all:
        input: "a.txt", "b.sh", "c.txt"
    rule a:
        input: "in.txt"
        output: "a.txt"
        shell: "echo a >> runs.log; (cat {input}; echo a) > {output}"
    rule b:
        input: "a.txt"
        output: "b.sh"
        shell: "echo b >> runs.log; (echo '#!/bin/sh'; cat {input}) > {output}; chmod +x {output}"
    rule c:
        input: "b.sh"
        output: "c.txt"
        log: "logs/c.log"
        shell: "echo c >> runs.log; (cat {input}; echo c) > {output}; echo made c > {log}"
"""


def clone(root: Path, name: str, flowfile: str = CHAIN) -> Flow:
    path = root / name
    path.mkdir()
    f = Flow(path)
    f.write(flowfile)
    f.file("in.txt", "hello\n")
    return f


def ran(f: Flow) -> list[str]:
    return f.read("runs.log").split() if f.exists("runs.log") else []


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes and mode: the store, byte for byte."""
    out: dict[str, bytes] = {}
    for base, _, names in os.walk(root):
        for n in names:
            p = Path(base, n)
            out[str(p.relative_to(root))] = p.read_bytes() + oct(p.stat().st_mode).encode()
    return out


def manifests(cache: Path) -> list[Path]:
    return sorted((cache / "ac").glob("*.json")) if (cache / "ac").is_dir() else []


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "lab-cache"


def test_a_second_clone_restores_everything_and_runs_nothing(tmp_path: Path, cache: Path) -> None:
    first, second = clone(tmp_path, "alice"), clone(tmp_path, "bob")
    err = first.ok("-c", "1", "--cache", f"file://{cache}")
    assert ran(first) == ["a", "b", "c"]
    assert "3 published to the cache" in err
    err = second.ok("-c", "1", "--cache", f"file://{cache}")
    assert ran(second) == [], "nothing runs in the second clone"
    assert "0 steps ran, 3 steps restored from the cache" in err
    for name in ("a.txt", "b.sh", "c.txt", "logs/c.log"):
        assert (second.root / name).read_bytes() == (first.root / name).read_bytes(), name
    assert os.stat(second.root / "b.sh").st_mode & stat.S_IXUSR, "the exec bit comes back"
    err = second.ok("-c", "1", "--cache", f"file://{cache}")
    assert "0 steps ran in" in err and "restored" not in err, "a no-op after it"


def test_a_target_restores_alone_and_a_following_no_op_asks_nothing(tmp_path: Path, cache: Path) -> None:
    first, second = clone(tmp_path, "alice"), clone(tmp_path, "bob")
    first.ok("-c", "1", "--cache", str(cache))
    assert second.planned("--cache", str(cache), "c.txt") == ["a.txt", "b.sh", "c.txt"]
    err = second.ok("-c", "1", "--cache", str(cache), "c.txt")
    assert second.read("c.txt") == first.read("c.txt")
    assert not second.exists("a.txt") and not second.exists("b.sh"), "upstream stays in the cache"
    assert "3 steps restored from the cache" in err and "2 left there" in err
    rc, out, _ = second.run("--why", "a.txt", "--cache", str(cache), "c.txt")
    assert rc == 0 and "left in the cache, not materialised" in out
    gone = cache.with_name("moved-away")
    cache.rename(gone)  # unreachable now: a no-op must not need it
    err = second.ok("-c", "1", "--cache", str(cache), "c.txt")
    assert "warning" not in err and "0 steps ran in" in err and ran(second) == []
    assert second.planned("--cache", str(cache), "c.txt") == []
    gone.rename(cache)
    err = second.ok("-c", "1", "--cache", str(cache), "b.sh")  # asked for now: placed
    assert second.read("b.sh") == first.read("b.sh") and not second.exists("a.txt") and ran(second) == []


def test_without_the_cache_outputs_left_there_are_made(tmp_path: Path, cache: Path) -> None:
    first, second = clone(tmp_path, "alice"), clone(tmp_path, "bob")
    first.ok("-c", "1", "--cache", str(cache))
    second.ok("-c", "1", "--cache", str(cache), "c.txt")
    second.ok("-c", "1", "--no-cache")  # all: a.txt and b.sh exist nowhere else
    assert sorted(ran(second)) == ["a", "b"] and second.read("b.sh") == first.read("b.sh")


def test_back_on_an_old_branch_the_steps_are_restored(tmp_path: Path, cache: Path) -> None:
    f = clone(tmp_path, "lab")
    f.ok("-c", "1", "--cache", str(cache))
    old = {n: f.read(n) for n in ("a.txt", "b.sh", "c.txt")}
    f.write(CHAIN.replace("echo a) > {output}", "echo A) > {output}"))  # a feature branch
    f.ok("-c", "1", "--cache", str(cache))
    assert ran(f) == ["a", "b", "c"] * 2 and f.read("a.txt") != old["a.txt"]
    f.write(CHAIN)  # back
    plan = f.plan("--cache", str(cache))
    assert {s["outputs"][0]: s["reasons"][0]["kind"] for s in plan} == {
        "a.txt": "cache-hit", "b.sh": "cache-hit", "c.txt": "cache-hit"}
    err = f.ok("-c", "1", "--cache", str(cache))
    assert ran(f) == ["a", "b", "c"] * 2, "nothing ran again"
    assert {n: f.read(n) for n in old} == old and "3 steps restored from the cache" in err


def test_a_failed_step_publishes_nothing(tmp_path: Path, cache: Path) -> None:
    f = clone(tmp_path, "lab", CHAIN.replace("echo made c > {log}", "echo made c > {log}; exit 3"))
    rc, _, err = f.run("-c", "1", "--cache", str(cache))
    assert rc == 1 and "Traceback" not in err
    assert len(manifests(cache)) == 2, "a and b only"
    other = clone(tmp_path, "other")
    other.ok("-c", "1", "--cache", str(cache))
    assert ran(other) == ["c"]


@pytest.mark.slow
def test_a_killed_run_publishes_nothing_and_its_half_output_is_not_trusted(tmp_path: Path, cache: Path) -> None:
    f = clone(tmp_path, "lab", CHAIN.replace(
        'echo c >> runs.log; (cat {input}; echo c) > {output}',
        'echo c >> runs.log; cat {input} > {output}; touch started; if [ -e slow ]; then sleep 30; fi; echo c >> {output}'))
    f.file("slow", "")
    proc = f.popen("-c", "1", "--cache", str(cache), start_new_session=True)
    f.wait_for("started", timeout=20)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(manifests(cache)) == 2, "c was not finished: not published"
    os.unlink(f.root / "slow")
    other = clone(tmp_path, "other", f.read("Flowfile"))
    other.ok("-c", "1", "--cache", str(cache))
    assert ran(other) == ["c"], "no partial entry to restore"
    err = f.ok("-c", "1", "--cache", str(cache))
    assert f.read("c.txt").endswith("c\n") and f.read("c.txt") == other.read("c.txt")
    assert "restored" in err or ran(f)[-1] == "c", "the half output was remade, never kept"


def test_read_only_mode_never_writes_to_the_store(tmp_path: Path, cache: Path) -> None:
    first = clone(tmp_path, "ci")
    first.ok("-c", "1", "--cache", str(cache), "b.sh")
    before = snapshot(cache)
    reader = clone(tmp_path, "laptop")
    reader.file("flowmake.toml", f'[cache]\nurl = "file://{cache}"\nmode = "read"\n')
    time.sleep(0.01)
    err = reader.ok("-c", "1")
    assert ran(reader) == ["c"], "a and b restored, c (never published) runs"
    assert "published" not in err
    assert snapshot(cache) == before
    writer = clone(tmp_path, "writer")
    writer.ok("-c", "1", "--cache", str(cache), "--cache-mode", "write")
    assert ran(writer) == ["a", "b", "c"], "write mode never restores"
    assert len(manifests(cache)) == 3


def test_a_rule_with_cache_false_is_never_cached(tmp_path: Path, cache: Path) -> None:
    flowfile = CHAIN.replace('    rule b:\n        input: "a.txt"', '    rule b:\n        cache: False\n        input: "a.txt"')
    first, second = clone(tmp_path, "alice", flowfile), clone(tmp_path, "bob", flowfile)
    first.ok("-c", "1", "--cache", str(cache))
    assert len(manifests(cache)) == 2
    second.ok("-c", "1", "--cache", str(cache))
    assert ran(second) == ["b"], "a is restored for b to read; c is a hit on b's output digest"


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_a_corrupted_blob_reruns_the_step_and_nothing_corrupt_lands(tmp_path: Path, cache: Path, damage: str) -> None:
    first, second = clone(tmp_path, "alice"), clone(tmp_path, "bob")
    first.ok("-c", "1", "--cache", str(cache))
    _, out, _ = first.run("--why", "c.txt")  # a blob is named by its digest
    c_digest = next(line.split(": ")[1] for line in out.splitlines() if "output digest" in line)
    blob = next(cache.glob(f"cas/*/{c_digest}"))
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    if damage == "corrupt":
        data[0] ^= 0xFF
    else:
        del data[len(data) // 2:]
    blob.write_bytes(bytes(data))
    err = second.ok("-c", "1", "--cache", str(cache))
    assert ran(second) == ["c"] and "damaged" in err
    assert second.read("c.txt") == first.read("c.txt")
    third = clone(tmp_path, "carol")
    third.ok("-c", "1", "--cache", str(cache))
    assert ran(third) == [], "the rerun put the lost blob back"


def test_an_unreadable_store_is_a_warning_and_the_steps_run(tmp_path: Path) -> None:
    f = clone(tmp_path, "lab")
    (tmp_path / "not-a-dir").write_text("")
    err = f.ok("-c", "1", "--cache", str(tmp_path / "not-a-dir"))
    assert ran(f) == ["a", "b", "c"] and "warning: cache" in err


def test_an_unknown_cache_setting_names_the_file_and_line(tmp_path: Path) -> None:
    f = clone(tmp_path, "lab")
    f.file("flowmake.toml", '[cache]\nurl = "file:///somewhere"\nmodes = "read"\n')
    rc, _, err = f.run("-n")
    assert rc == 2 and "flowmake.toml:3" in err and "unknown key 'modes' in [cache]" in err


def test_a_step_whose_input_changed_while_it_ran_publishes_nothing(tmp_path: Path, cache: Path) -> None:
    f = clone(tmp_path, "lab", CHAIN.replace("(cat {input}; echo a) > {output}",
                                             "(cat {input}; echo a) > {output}; echo more >> {input}"))
    rc, _, err = f.run("-c", "1", "--cache", str(cache), "a.txt")
    assert rc == 1 and "changed while" in err
    assert manifests(cache) == []


@pytest.mark.slow
def test_an_interrupted_run_publishes_what_finished_and_not_what_was_cut_short(tmp_path: Path, cache: Path) -> None:
    f = clone(tmp_path, "lab", CHAIN.replace(
        'echo c >> runs.log; (cat {input}; echo c) > {output}',
        'echo c >> runs.log; cat {input} > {output}; touch started; sleep 30; echo c >> {output}'))
    proc = f.popen("-c", "1", "--cache", str(cache))
    f.wait_for("started", timeout=20)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err
    assert len(manifests(cache)) == 2, "a and b finished and were published; c was not"



def test_directory_and_temp_outputs_come_back_whole(tmp_path: Path, cache: Path) -> None:
    flowfile = """
        rule all:
            input: "report.txt"
        rule tree:
            input: "in.txt"
            output: directory("tree")
            shell: "mkdir -p {output}/sub; cp {input} {output}/sub/x; printf '#!/bin/sh\\\\n' > {output}/run.sh; "
                   "chmod +x {output}/run.sh; ln -s sub/x {output}/link; echo tree >> runs.log"
        rule mid:
            input: "tree"
            output: temp("mid.txt")
            shell: "ls -R {input} > {output}; echo mid >> runs.log"
        rule report:
            input: "mid.txt"
            output: "report.txt"
            shell: "wc -l < {input} > {output}; echo report >> runs.log"
    """
    first, second = clone(tmp_path, "alice", flowfile), clone(tmp_path, "bob", flowfile)
    first.ok("-c", "1", "--cache", str(cache), "tree", "report.txt")
    assert not first.exists("mid.txt") and len(manifests(cache)) == 3, "the temp() output was published before it went"
    second.ok("-c", "1", "--cache", str(cache), "tree", "report.txt")
    assert ran(second) == []
    tree = second.root / "tree"
    assert (tree / "sub" / "x").read_text() == "hello\n" and os.readlink(tree / "link") == "sub/x"
    assert os.stat(tree / "run.sh").st_mode & stat.S_IXUSR
    assert second.read("report.txt") == first.read("report.txt") and not second.exists("mid.txt")


def test_a_restore_never_overwrites_a_protected_output(tmp_path: Path, cache: Path) -> None:
    flowfile = """
        rule p:
            input: "in.txt"
            output: protected("p.txt")
            shell: "cp {input} {output}"
    """
    first, second = clone(tmp_path, "alice", flowfile), clone(tmp_path, "bob", flowfile)
    first.ok("-c", "1", "--cache", str(cache))
    mine = second.file("p.txt", "kept by hand\n")
    mine.chmod(0o444)
    os.utime(mine, (1, 1))  # older than in.txt: not adopted
    rc, _, err = second.run("-c", "1", "--cache", str(cache))
    assert rc == 2 and "write-protected outputs would be overwritten" in err
    assert second.read("p.txt") == "kept by hand\n"


def test_every_blob_damaged_every_step_runs_and_the_run_succeeds(tmp_path: Path, cache: Path) -> None:
    # More restores than the threads take at once: damage is met both in a thread and inline.
    flowfile = """
        rule all:
            input: expand("out/{i}.txt", i=range(24))
        rule make:
            input: "in.txt"
            output: "out/{i}.txt"
            shell: "(cat {input}; echo {wildcards.i}) > {output}; echo {wildcards.i} >> runs.log"
    """
    first, second = clone(tmp_path, "alice", flowfile), clone(tmp_path, "bob", flowfile)
    first.ok("-c", "2", "--cache", str(cache))
    for blob in cache.glob("cas/*/*"):
        blob.chmod(0o644)
        blob.write_bytes(b"not what it was\n")
    err = second.ok("-c", "2", "--cache", str(cache))
    assert sorted(ran(second), key=int) == [str(i) for i in range(24)] and err.count("damaged") == 24
    assert all(second.read(f"out/{i}.txt") == first.read(f"out/{i}.txt") for i in range(24))


def test_a_damaged_restore_of_a_conda_rule_sets_its_env_up_and_runs_in_it(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore needs no software, so none is set up for it; when its entry turns out damaged the
    step runs, and its conda env must then be made first (else the job fails, not for its own fault)."""
    from tests.e2e.test_deployment import FAKE_CONDA, fake_tools

    rules = """
        rule hi:
            output: "hi.txt"
            conda: "envs/hello.yaml"
            shell: "echo hi >> runs.log; hello there > {output}"
    """
    first, second = clone(tmp_path, "alice", rules), clone(tmp_path, "bob", rules)
    for f in (first, second):
        f.file("envs/hello.yaml", "channels: [conda-forge]\ndependencies: [hello]\n")
    log = fake_tools(first, monkeypatch, conda=FAKE_CONDA)
    first.ok("-c", "1", "--use-conda", "--cache", str(cache))
    assert first.read("hi.txt") == "hello from the env: activated there\n"
    for blob in cache.glob("cas/*/*"):  # bob's restore finds the entry damaged
        blob.chmod(0o644)
        blob.write_text("not what was made\n")
    log.unlink()
    err = second.ok("-c", "1", "--use-conda", "--cache", str(cache))
    assert "damaged" in err and ran(second) == ["hi"]
    assert second.read("hi.txt") == "hello from the env: activated there\n"
    assert "create" in log.read_text()  # bob's env was made for the run


def test_two_runs_publishing_the_same_steps_at_once_both_succeed_and_the_entries_are_whole(
        tmp_path: Path, cache: Path) -> None:
    slow = CHAIN.replace('shell: "echo a >> runs.log;', 'shell: "sleep 1; echo a >> runs.log;')
    first, second = clone(tmp_path, "alice", slow), clone(tmp_path, "bob", slow)
    procs = [f.popen("-c", "1", "--cache", str(cache)) for f in (first, second)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0 and "Traceback" not in err, err
    # Which of them made which step depends on timing; either way every entry is whole.
    assert len(manifests(cache)) == 3
    assert "a" in ran(first) and "a" in ran(second), "both made a: neither found an entry when it planned"
    third = clone(tmp_path, "carol", slow)
    third.ok("-c", "1", "--cache", str(cache))
    assert ran(third) == []
    for name in ("a.txt", "b.sh", "c.txt", "logs/c.log"):
        assert (third.root / name).read_bytes() == (first.root / name).read_bytes(), name


def test_snakemakes_bare_cache_flag_caches_only_the_rules_that_say_cache_true(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = """
        rule all:
            input: "b.txt"
        rule a:
            input: "in.txt"
            output: "a.txt"
            cache: True
            shell: "echo a >> runs.log; cat {input} > {output}"
        rule b:
            input: "a.txt"
            output: "b.txt"
            shell: "echo b >> runs.log; cat {input} > {output}"
    """
    monkeypatch.setenv("SNAKEMAKE_OUTPUT_CACHE", str(cache))
    first, second = clone(tmp_path, "alice", rules), clone(tmp_path, "bob", rules)
    err = first.ok("-c", "1", "--cache")
    assert "1 published to the cache" in err and len(manifests(cache)) == 1
    second.ok("-c", "1", "--cache")
    assert ran(second) == ["b"], "a came from the cache; b, which does not say cache: True, ran"


def test_a_no_op_never_opens_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With everything current nothing is asked of the cache, so it is not even opened (for S3 that
    is boto3's import and a client: a tenth of a second or more on every no-op). A profile that
    does not exist shows it: opening fails, but only a run with work to do says so."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    f = clone(tmp_path, "alice")
    f.ok("-c", "1")
    f.file("flowmake.toml", '[cache]\nurl = "s3://lab-cache/flowmake"\nprofile = "no-such-profile"\n')
    err = f.ok("-c", "1")
    assert "0 steps ran" in err and "cache" not in err
    f.file("in.txt", "changed\n")
    rc, _, err = f.run("-c", "1")
    assert rc == 2 and "no-such-profile" in err and "Traceback" not in err
