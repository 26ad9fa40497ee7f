"""Pipe groups: steps joined by ``pipe()`` or ``service()`` outputs, which run at the same time.

A ``pipe("x.sam")`` output is a named pipe (a FIFO): its producer writes while its one consumer
reads, so both must run at once, on one machine. A ``service("db.sock")`` output is made by a step
that keeps running (a server) while every step that reads it runs, and is stopped once they are
done. Steps joined by such outputs form a *pipe group* (a chain of pipes is one group), as in
Snakemake.

Who does what: the planner decides a group as one (all its steps run, or none), keying a consumer
from its producer's key in place of the stream's digest (a stream has no content to digest and is
never traced); the scheduler starts a group once all its steps' other inputs are ready and holds
the resources of all of them; ``group_script`` makes the group one command, so each backend runs
it as one job on one host (local, docker, ssh and slurm alike), with no backend knowing of pipes.
If any step of the group fails, the others are stopped and the whole group fails: nothing of it
is recorded as made. The FIFOs and service files never outlive the job.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from flowmake.errors import FlowfileError
from flowmake.graph import Step
from flowmake.namedlist import Flag
from flowmake.rules import Rule, RuleKind

STREAMS = frozenset({Flag.PIPE, Flag.SERVICE})
# What stands for a stream's digest in its consumer's key: the producer's key after this prefix.
STREAM_DIGEST = "stream:"
SERVICE_WAIT_S = 60  # how long a consumer waits for its service to create its file


def streams_rule(rule: Rule) -> bool:
    """Whether a rule declares pipe or service outputs."""
    return rule.streams


def stream_outputs(step: Step) -> tuple[str, ...]:
    """The step's pipe and service outputs."""
    if not streams_rule(step.rule):  # before ``instance``: a step restored from the graph memo
        return ()                     # is instantiated only when something reads it
    inst = step.instance
    if inst is None:
        return ()
    return tuple(o for o in step.outputs if inst.flags.get(o, frozenset()) & STREAMS)


def real_outputs(step: Step) -> tuple[str, ...]:
    """The outputs that are files: what is checked, digested and traced."""
    streams = stream_outputs(step)
    return tuple(o for o in step.outputs if o not in streams) if streams else step.outputs


@dataclass
class PipeGroup:
    """Steps that run at once, in dependency order, and the streams between them."""

    members: list[Step] = field(default_factory=list)
    producer: dict[str, Step] = field(default_factory=dict)  # stream path -> the step writing it

    @property
    def pipes(self) -> list[str]:
        return [p for p, s in self.producer.items() if Flag.PIPE in _flags(s, p)]

    @property
    def services(self) -> list[Step]:
        return [s for s in self.members if any(Flag.SERVICE in _flags(s, p) for p in stream_outputs(s))]


def _flags(step: Step, path: str) -> frozenset[Flag]:
    return step.instance.flags.get(path, frozenset()) if step.instance is not None else frozenset()


def find_groups(steps: Sequence[Step]) -> dict[int, PipeGroup]:
    """Each step of a pipe group (by id) → its group. Raises ``FlowfileError`` naming the rule for
    what Snakemake refuses: a pipe with several readers, a stream nobody reads (a target), a stream
    read by a rule that runs nothing, and (ours) members that name different containers."""
    if not any(s.rule.streams for s in steps):
        return {}
    producer: dict[str, Step] = {}
    for step in steps:
        for path in stream_outputs(step):
            producer[path] = step
    if not producer:
        return {}
    readers: dict[str, list[Step]] = {p: [] for p in producer}
    producing = {id(s) for s in producer.values()}
    for step in steps:
        if not any(id(d) in producing for d in step.deps):
            continue
        inst = step.instance
        if inst is None:
            continue
        for path in dict.fromkeys(inst.input):
            if path in readers and producer[path] is not step:
                readers[path].append(step)
    groups: dict[int, PipeGroup] = {}
    for path, prod in producer.items():
        _check(path, prod, readers[path])
        group = _merge(groups, [prod, *readers[path]])
        group.producer[path] = prod
    order = {id(s): i for i, s in enumerate(steps)}
    for group in {id(g): g for g in groups.values()}.values():
        group.members.sort(key=lambda s: order[id(s)])
        _check_containers(group)
    return groups


def _check(path: str, prod: Step, readers: list[Step]) -> None:
    kind = "pipe" if Flag.PIPE in _flags(prod, path) else "service"
    rule = prod.rule
    if not readers:
        raise FlowfileError(
            f"output {path!r} is marked as {kind}() but no step reads it: it would wait for a reader "
            "forever", location=rule.location, rule=rule.name,
            hint="a pipe or service output cannot be a target; request what its reader makes")
    if kind == "pipe" and len(readers) > 1:
        raise FlowfileError(
            f"output {path!r} is marked as pipe() but more than one step reads it: "
            + ", ".join(r.id for r in readers), location=rule.location, rule=rule.name,
            hint="a pipe has exactly one reader: make it a plain file, or give each reader its own pipe")
    for r in readers:
        if r.rule.kind is RuleKind.NONE:
            raise FlowfileError(
                f"output {path!r} is marked as {kind}() but rule {r.rule.name!r}, which runs nothing, "
                "reads it: nothing would ever read the stream", location=rule.location, rule=rule.name,
                hint=f"request what a rule with a command makes of {path!r} instead")


def _merge(groups: dict[int, PipeGroup], steps: Iterable[Step]) -> PipeGroup:
    steps = list(steps)
    found = list({id(g): g for g in (groups.get(id(s)) for s in steps) if g is not None}.values())
    group = found[0] if found else PipeGroup()
    for other in found[1:]:
        group.producer.update(other.producer)
        group.members.extend(other.members)
    for s in steps:
        if not any(m is s for m in group.members):
            group.members.append(s)
    for m in group.members:
        groups[id(m)] = group
    return group


def _check_containers(group: PipeGroup) -> None:
    images = {m.rule.container for m in group.members}
    if len(images) > 1:
        first = group.members[0].rule
        raise FlowfileError(
            "the steps of a pipe group run as one job, but they name different containers: "
            + ", ".join(f"{m.rule.name} ({m.rule.container or 'none'})" for m in group.members),
            location=first.location, rule=first.name, hint="give the rules of the group one container")


def group_script(group: PipeGroup, commands: Sequence[str]) -> str:
    """One bash script running every member's command at once (``commands`` in member order).

    It makes the FIFOs, starts the services, then the other steps (a reader of a service once its
    file exists), and waits. The first step to fail stops all the others (one signal to the job's
    process group, which every backend gives each job) and the script exits with its status; when
    all but the services succeeded, the services are stopped the same way. FIFOs and service files
    are removed whatever happens.
    """
    services = group.services
    is_service = [any(m is s for s in services) for m in group.members]
    served = {p for p, s in group.producer.items() if any(s is v for v in services)}
    lines = [
        "set +eu  # each step's status is handled below",
        f"__fm_streams=({' '.join(shlex.quote(p) for p in group.producer)})",
        "__fm_clean() { rm -f -- \"${__fm_streams[@]}\"; rm -rf -- \"${__fm_rc:-}\"; }",
        "trap __fm_clean EXIT",
        "__fm_stop() { trap '' TERM; kill -TERM 0 2>/dev/null; wait; }",
        "__fm_clean",
        # The folders too: a backend that stages files (ssh) creates those of the outputs it knows.
        *(f"mkdir -p -- {shlex.quote(d)} || exit 1" for d in dict.fromkeys(
            posixpath.dirname(p) for p in group.producer) if d),
        *(f"mkfifo -- {shlex.quote(p)} || exit 1" for p in group.pipes),
        # Each step says "index status" into this FIFO when it ends; held open read-write here, so
        # neither its writers nor the reads below ever block on opening it.
        "__fm_rc=$(mktemp -d) && mkfifo \"$__fm_rc/ended\" && exec {__fm_fd}<>\"$__fm_rc/ended\" || exit 1",
    ]
    if served:
        lines.append("__fm_wait() { local n=0; until [ -e \"$1\" ] || [ -L \"$1\" ]; do n=$((n+1)); "
                     f"if [ $n -gt {SERVICE_WAIT_S * 10} ]; then echo \"flowmake: service file $1 was not "
                     "created\" >&2; return 1; fi; sleep 0.1; done; }")
    # Services first, so that their readers find them starting.
    for i in sorted(range(len(group.members)), key=lambda i: not is_service[i]):
        inst = group.members[i].instance
        waits = dict.fromkeys(p for p in (inst.input if inst is not None else ()) if p in served)
        wait = "".join(f"__fm_wait {shlex.quote(p)} && " for p in waits)
        lines.append(f"__fm_c{i}={shlex.quote(commands[i])}")
        lines.append(f"{{ {wait}( set -euo pipefail; eval \"$__fm_c{i}\" ); echo \"{i} $?\" > \"$__fm_rc/ended\"; }} &")
    lines += [
        f"__fm_names=({' '.join(shlex.quote(m.id) for m in group.members)})",
        f"__fm_service=({' '.join('1' if x else '0' for x in is_service)})",
        f"__fm_left={is_service.count(False)}",
        "while [ \"$__fm_left\" -gt 0 ] && read -r i s <&\"$__fm_fd\"; do",
        "  if [ \"$s\" != 0 ]; then",
        "    echo \"flowmake: ${__fm_names[$i]} failed with exit code $s: stopping the rest of its pipe group\" >&2",
        "    __fm_stop; exit \"$s\"",
        "  fi",
        "  [ \"${__fm_service[$i]}\" = 1 ] || __fm_left=$((__fm_left - 1))",
        "done",
    ]
    if services:
        lines.append("__fm_stop  # every reader is done: stop the services")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"
