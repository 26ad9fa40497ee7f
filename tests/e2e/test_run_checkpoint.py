"""A checkpoint whose fan-out is known only once it ran: the new steps join the running plan."""

from __future__ import annotations

from tests.conftest import Flow

FLOWFILE = """
    def parts(wildcards):
        out = checkpoints.split.get(**wildcards).output[0]
        ids = glob_wildcards(out + "/{n}.txt").n
        return expand("processed/{s}/{n}.txt", s=wildcards.s, n=sorted(ids))

    rule all:
        input: "total/a.txt"

    checkpoint split:
        input: "src/{s}.txt"
        output: directory("split/{s}")
        shell:
            '''
            echo split >> runs.log
            mkdir -p {output}
            for n in $(seq 1 $(cat {input})); do echo $n > {output}/$n.txt; done
            '''

    rule process:
        input: "split/{s}/{n}.txt"
        output: "processed/{s}/{n}.txt"
        shell: "echo process >> runs.log; echo $(( $(cat {input}) * 10 )) > {output}"

    rule total:
        input: parts
        output: "total/{s}.txt"
        shell: "echo total >> runs.log; cat {input} | paste -sd+ | bc > {output}"
"""


def runs(flow: Flow) -> list[str]:
    return flow.read("runs.log").split() if flow.exists("runs.log") else []


def test_fan_out_decided_at_run_time_joins_the_plan_and_converges(flow: Flow) -> None:
    flow.write(FLOWFILE)
    flow.file("src/a.txt", "3\n")
    planned = flow.plan()
    assert [s["rule"] for s in planned if s["rule"] != "all"] == ["split", "total"], "consumers wait for it"
    total = next(s for s in planned if s["rule"] == "total")
    assert total["reasons"] == [{"kind": "checkpoint", "path": "split/a"}]

    flow.ok("-c", "2")  # one run, no restart
    assert flow.read("total/a.txt") == "60\n"
    assert sorted(runs(flow)) == ["process"] * 3 + ["split", "total"]

    (flow.root / "runs.log").unlink()
    assert flow.planned() == []
    flow.ok("-c", "2")
    assert runs(flow) == [], "a second run is a no-op"

    flow.file("src/a.txt", "5\n")
    flow.ok("-c", "2")
    assert flow.read("total/a.txt") == "150\n", "the checkpoint reran and the fan-out grew"
    assert sorted(runs(flow)) == ["process"] * 2 + ["split", "total"], "only the new parts were processed"
