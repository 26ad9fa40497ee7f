"""Targets → Graph: backward chaining from requested files to the steps that make them.

For each needed path the rules whose outputs match it are candidates. Candidates are ordered by
``ruleorder`` and then "a rule without wildcards beats one with wildcards"; a candidate whose inputs
can be neither found nor produced is dropped; two equally preferred candidates that both work are an
ambiguity error. A path no rule produces is a source file: it must exist. A rule that matches a
path only with an unsafe wildcard value (``patterns``) cannot make it.

Resolution is written as generators driven by an explicit stack, so a 2,000-deep chain needs no deep
Python recursion. The graph grows while a run goes on: a step whose input function asked an
unfinished checkpoint is *pending* and is instantiated again once the checkpoint is done.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Iterator, Sequence, TypeVar

from flowmake.errors import (AmbiguousRuleError, CycleError, FlowmakeError, MissingInputError,
                             NoRuleError, UnsafePathError, UnsafeWildcardError, WildcardError,
                             did_you_mean)
from flowmake.namedlist import Flag
from flowmake.output_claims import claim
from flowmake.patterns import Bindings
from flowmake.rule_index import RuleIndex
from flowmake.rules import CheckpointView, IncompleteCheckpoint, Rule, Workflow
from flowmake.step import Step  # the graph's node; modules import it from here too


def _graph_key(rule: Rule, outputs: tuple[str, ...], bindings: object) -> str:
    return rule.name + "\0" + "\0".join(outputs) if outputs else rule.name + "\0" + repr(bindings)


class _FailureKind(enum.Enum):
    """Why a path cannot be made. ``_pick_failure`` reports the first kind, in this order, that
    any candidate failed with."""

    AMBIGUOUS = enum.auto()  # several rules can make it
    UNSAFE = enum.auto()     # a rule matches only with a refused wildcard value
    MISSING = enum.auto()    # an input of every candidate is missing
    CYCLE = enum.auto()
    NORULE = enum.auto()     # no rule produces it and it does not exist


@dataclass
class _Failure:
    """Why a path cannot be made; grows a consumer chain as it travels up."""

    kind: _FailureKind
    path: str
    chain: list[str] = field(default_factory=list)
    rule: Rule | None = None
    error: FlowmakeError | None = None


SOURCE = None  # a path that exists and no rule needs to make
# Yields the paths it needs, is sent what makes each (a step, SOURCE or a _Failure), returns its own.
_R = TypeVar("_R")
_Resolution = Generator[str, "Step | None | _Failure", _R]
_UNRESOLVED = object()


class _CheckpointView:
    """What input functions see of checkpoints: done if present and not to run again first."""

    def __init__(self, unfinished: set[str], exists: Callable[[str], bool]) -> None:
        self._unfinished = unfinished
        self._exists = exists

    def is_done(self, paths: tuple[str, ...]) -> bool:
        return all(p not in self._unfinished and self._exists(p) for p in paths)


class Graph:
    """Steps needed for some targets, and who produces which path."""

    def __init__(self, workflow: Workflow, exists: Callable[[str], bool]) -> None:
        """``exists`` answers every existence question resolution asks (``graph_memo.ExistsLog``
        records them)."""
        self.workflow = workflow
        self.exists = exists
        self.producer: dict[str, Step | None | _Failure] = {}
        self.steps: dict[str, Step] = {}  # by (rule, outputs) identity
        self.targets: list[Step | str] = []
        # Outputs of checkpoint steps that will (re)run in this invocation: not done yet.
        self._unfinished_checkpoints: set[str] = set()
        self._view = _CheckpointView(self._unfinished_checkpoints, exists)
        self._index = RuleIndex(workflow)

    # ---- building ----------------------------------------------------------------------------

    def add_targets(self, targets: Iterable[str]) -> list[Step | None]:
        """Resolve each target; raises a typed error naming the target on failure."""
        found: list[Step | None] = []
        for t in targets:
            result = self._drive(t)
            if isinstance(result, _Failure):
                raise self._error_for(result, t)
            found.append(result)
            self.targets.append(result if result is not None else t)
        return found

    def add_rule_target(self, rule: Rule) -> Step:
        """A rule name as target: the rule must have no wildcards, like in Snakemake."""
        if rule.has_wildcards:
            raise FlowmakeError(f"rule {rule.name!r} has wildcards and cannot be a target",
                                location=rule.location, rule=rule.name,
                                hint="request one of its output files instead")
        step = self._step_for(rule, rule.bindings_from_raw({}))
        result = self._drive_step(step)
        result = self._claim(result) if isinstance(result, Step) else result
        if isinstance(result, _Failure):
            raise self._error_for(result, rule.name)
        self.targets.append(step)
        return step

    def _step_for(self, rule: Rule, bindings: Bindings, path: str | None = None) -> Step:
        pats = rule.output_patterns  # one: the path it matched is the output (unless a log did)
        outputs = (path,) if path is not None and len(pats) == 1 and not rule.product_patterns else tuple(
            p.format(bindings) for p in pats)
        key = _graph_key(rule, outputs, bindings)
        step = self.steps.get(key)
        if step is None:
            step = Step(rule, bindings, outputs)
            self.steps[key] = step
        return step

    def restore(self, steps: Iterable[Step], targets: Iterable[Step | str]) -> None:
        """Take steps resolved by an earlier run (see ``memo``), their ``deps`` already set."""
        for step in steps:
            self.steps[_graph_key(step.rule, step.outputs, step.bindings if not step.outputs else None)] = step
            for out in step.outputs:
                self.producer.setdefault(out, step)
        self.targets.extend(targets)

    def _drive(self, path: str) -> Step | None | _Failure:
        return self._run(self._resolve(path, requested=True), path)

    def _drive_step(self, step: Step) -> Step | _Failure:
        return self._run(self._resolve_step(step, step.outputs[0] if step.outputs else step.rule.name), None)

    def _run(self, gen: Generator[str, Any, Any], first: str | None) -> Any:
        """Drive resolution generators (``_Resolution``) with an explicit stack (no deep recursion).

        ``paths[i]`` is the path frame ``i`` resolves (None for a step frame); a request for a path
        already on the stack is a cycle.
        """
        stack: list[Generator[str, Any, Any]] = [gen]
        paths: list[str | None] = [first]
        on_stack = {first} if first is not None else set()
        send: Any = None  # a step, None, a _Failure, or _UNRESOLVED
        producer = self.producer
        while stack:
            try:
                req = stack[-1].send(send)
            except StopIteration as stop:
                stack.pop()
                done = paths.pop()
                send = stop.value
                if done is not None:
                    on_stack.discard(done)
                    # A cycle depends on the path we came from: never remember it.
                    if not (isinstance(send, _Failure) and send.kind is _FailureKind.CYCLE):
                        producer[done] = send
                continue
            send = producer.get(req, _UNRESOLVED)
            if send is not _UNRESOLVED:
                continue
            if req in on_stack:
                loop = [p for p in paths if p is not None]
                loop = loop[loop.index(req):] + [req]
                send = _Failure(_FailureKind.CYCLE, req, chain=loop)
            else:
                stack.append(self._resolve(req))
                paths.append(req)
                on_stack.add(req)
                send = None
        return send

    def _resolve(self, path: str, requested: bool = False) -> _Resolution[Step | None | _Failure]:
        # requested: the user asked for the path, so a rule refusing its wildcard value (patterns:
        # "Safety") is an error even if the file exists; elsewhere such a file is a source.
        known = self.producer.get(path, _UNRESOLVED)
        if known is not _UNRESOLVED and not (requested and known is SOURCE):
            return known  # type: ignore[return-value]  # resolved meanwhile (a sibling output)
        refused: list[UnsafeWildcardError] = []
        candidates = self._index.candidates(path, refused)
        unsafe = [_Failure(_FailureKind.UNSAFE, path, error=e) for e in refused[:1]]
        if not candidates:
            if self.exists(path) and not (requested and unsafe):
                return SOURCE
            return unsafe[0] if unsafe else _Failure(_FailureKind.NORULE, path)
        if len(candidates) == 1 and not unsafe:  # the common case, without the bookkeeping of several
            step = self._step_for(*candidates[0], path)
            result = yield from self._resolve_step(step, path)
            if isinstance(result, _Failure):
                # An existing file is a source even if its rule closes a cycle (as in Snakemake).
                ok = result.kind is not _FailureKind.CYCLE or not requested
                return SOURCE if ok and self.exists(path) else result
            return self._claim(step)
        groups = self._preference_groups(candidates)
        failures: list[_Failure] = []
        for group in groups:
            winners: list[Step] = []
            for rule, bindings in group:
                step = self._step_for(rule, bindings, path)
                result = yield from self._resolve_step(step, path)
                if isinstance(result, _Failure):
                    failures.append(result)
                else:
                    winners.append(step)
            if len(winners) > 1:
                names = ", ".join(s.rule.name for s in winners)
                return _Failure(
                    _FailureKind.AMBIGUOUS,
                    path,
                    error=AmbiguousRuleError(
                        f"rules {names} can all produce {path!r}",
                        location=winners[0].rule.location,
                        target=path,
                        details=[f"{s.rule.name} at {s.rule.location}" for s in winners],
                        hint="add a 'ruleorder:' or constrain the wildcards",
                    ),
                )
            if winners:
                return self._claim(winners[0])
        # Every candidate failed: a file that exists is a source after all (Snakemake does this).
        if self.exists(path) and not requested:
            return SOURCE
        if self.exists(path) and all(f.kind is not _FailureKind.CYCLE for f in failures) and not unsafe:
            return SOURCE
        return _pick_failure(failures + unsafe)

    def _claim(self, step: Step) -> Step | _Failure:
        """Record the producer of the step's outputs; a conflict (see ``output_claims``) fails."""
        for out in step.outputs:
            error = claim(self.producer, step, out, Step)
            if error is not None:
                return _Failure(_FailureKind.AMBIGUOUS, out, error=error)
        return step

    def _preference_groups(self, candidates: list[tuple[Rule, Bindings]]) -> list[list[tuple[Rule, Bindings]]]:
        """Candidates in preference order, equally preferred ones grouped together."""
        if len(candidates) == 1:
            return [candidates]
        wf = self.workflow

        def beats(a: Rule, b: Rule) -> bool:
            pref = wf.prefers(a.name, b.name)
            if pref is not None:
                return pref
            return not a.has_wildcards and b.has_wildcards

        groups: list[list[tuple[Rule, Bindings]]] = []
        remaining = list(candidates)
        while remaining:
            top = [c for c in remaining if not any(beats(o[0], c[0]) for o in remaining if o is not c)]
            if not top:  # contradictory ruleorder: fall back to file order
                top = [remaining[0]]
            groups.append(top)
            remaining = [c for c in remaining if c not in top]
        return groups

    def _instantiate(self, step: Step) -> None:
        try:
            step.instance = step.rule.instantiate(step.bindings, self._view)
            step.waits_on = ()
            step.outputs = tuple(step.instance.output)
        except IncompleteCheckpoint as inc:
            step.instance = None
            step.waits_on = tuple(inc.outputs)

    def _resolve_step(self, step: Step, path: str) -> _Resolution[Step | _Failure]:
        if step.resolved:
            return step
        self._instantiate(step)
        inst = step.instance
        if inst is not None:
            # A checkpoint's outputs that the input function read are dependencies too: the step
            # must come after the checkpoint, and be asked again if the checkpoint reruns.
            consulted = inst.consulted
            needed: Sequence[str] = [*inst.input, *sorted(consulted)] if consulted else inst.input
        else:
            needed = step.waits_on
        for o in step.outputs:
            if o[:1] == "/" or o[:2] == ".." and (o == ".." or o[2] == "/") or "/../" in o:
                raise UnsafePathError(f"output {o!r} would leave the working directory",
                                      location=step.rule.location, rule=step.rule.name)
        deps: list[Step] = []
        seen: set[int] = set()
        flags = inst.flags if inst is not None else None
        for inp in needed:
            if flags and Flag.BEFORE_UPDATE in flags.get(inp, ()):
                continue  # the file as it is: whatever updates it is not its producer
            if len(inp) > 255 and any(len(part) > 255 for part in inp.split("/")):
                # No file system holds such a name: a wildcard keeps growing ({a} from {a}.x).
                raise WildcardError(
                    f"rule {step.rule.name!r} needs ever longer inputs ('{inp[:40]}...'): its input "
                    "pattern extends its own output pattern, so each step asks for another step of the "
                    "same rule (periodic wildcards)",
                    location=step.rule.location, rule=step.rule.name,
                    hint="constrain the wildcard, e.g. {a,[^.]+}, or give the input another name",
                )
            self._index.hint = (step.rule, step.bindings)  # see RuleIndex.hint
            result = yield inp
            if isinstance(result, _Failure):
                chained = _Failure(result.kind, result.path, list(result.chain), result.rule or step.rule, result.error)
                if result.kind is not _FailureKind.CYCLE:
                    chained.chain.append(f"needed by rule {step.rule.name!r} for {path!r} ({step.rule.location})")
                if result.kind is _FailureKind.NORULE:
                    chained.kind = _FailureKind.MISSING
                    chained.rule = step.rule
                return chained
            if result is not None and id(result) not in seen:
                seen.add(id(result))
                deps.append(result)
        step.deps = deps
        step.resolved = True
        return step

    # ---- dynamic growth --------------------------------------------------------------------

    @property
    def checkpoint_view(self) -> CheckpointView:
        """What a rule's input functions are given to ask whether checkpoints are done."""
        return self._view

    def checkpoints_to_run(self, outputs: Iterable[str]) -> None:
        """Checkpoint outputs that will be (re)made in this invocation: not done until they are."""
        self._unfinished_checkpoints.update(outputs)

    def checkpoint_finished(self, step: Step) -> None:
        """A checkpoint step has finished: input functions may read its outputs now."""
        self._unfinished_checkpoints.difference_update(step.outputs)

    def expand_pending(self, step: Step) -> list[Step]:
        """Instantiate a step again now that the checkpoints it waited on are done.

        Returns the steps that are new to the graph (the step itself first when it is ready).
        Raises a typed error when the new inputs cannot be made.
        """
        before = set(map(id, self.steps.values()))
        step.resolved = False
        result = self._run(self._resolve_step(step, step.outputs[0] if step.outputs else step.rule.name), None)
        if isinstance(result, _Failure):
            raise self._error_for(result, step.outputs[0] if step.outputs else step.rule.name)
        return [s for s in self.walk([step]) if id(s) not in before or s is step]

    def invalidate(self, steps: Iterable[Step], checkpoint_outputs: set[str]) -> None:
        """Checkpoints these steps consulted will rerun: they wait and are asked again afterwards.

        What they needed before was decided from the checkpoint's old outputs: every step that only
        they reached is forgotten, so it is resolved and planned afresh once the checkpoint is done.
        """
        for step in steps:
            consulted = step.instance.consulted if step.instance is not None else ()
            step.instance = None
            step.waits_on = tuple(sorted(set(consulted) & checkpoint_outputs))
            step.deps = [d for d in step.deps if set(d.outputs) & set(step.waits_on)]
            step.resolved = False
        live = {id(s) for s in self.walk()}
        for key, s in list(self.steps.items()):
            if id(s) not in live:
                del self.steps[key]
                for out in s.outputs:
                    if self.producer.get(out) is s:
                        del self.producer[out]

    # ---- reading --------------------------------------------------------------------------

    def walk(self, roots: Iterable[Step | None | str] | None = None) -> list[Step]:
        """Steps reachable from ``roots`` (default: the targets), dependencies before dependants."""
        roots = self.targets if roots is None else roots
        self._order_updates()
        order: list[Step] = []
        state: dict[int, int] = {}
        for root in roots:
            if not isinstance(root, Step):
                continue
            stack: list[tuple[Step, Iterator[Step]]] = [(root, iter(self.deps(root)))]
            if state.get(id(root)) == 2:
                continue
            state[id(root)] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    state[id(node)] = 2
                    order.append(node)
                elif id(nxt) not in state:
                    state[id(nxt)] = 1
                    stack.append((nxt, iter(self.deps(nxt))))
        return order

    def _order_updates(self) -> None:
        """A step reading ``before_update(f)`` runs before the step that ``update()``s ``f``
        (Snakemake orders them so, by priority and a mutex): the updater waits for the reader,
        unless the reader already comes after it."""
        if not any(Flag.UPDATE in fl for rule in self.workflow.rules  # outputs: declared flags only
                   for e in rule._output for fl in e.flags):
            return
        updaters: dict[str, Step] = {}
        readers: list[tuple[str, Step]] = []
        for step in list(self.steps.values()):
            flags = step.instance.flags if step.instance is not None else None
            if not flags or not step.rule.may_flag:
                continue
            for path, fl in flags.items():
                if Flag.UPDATE in fl:
                    updaters[path] = step
                elif Flag.BEFORE_UPDATE in fl:
                    readers.append((path, step))
        for path, reader in readers:
            updater = updaters.get(path)
            if updater is None or updater is reader or reader in updater.deps \
                    or updater in self.walk_from(reader):
                continue
            updater.deps = [*updater.deps, reader]

    def walk_from(self, step: Step) -> list[Step]:
        """``step`` and every step it waits for, transitively."""
        seen: dict[int, Step] = {}
        todo = [step]
        while todo:
            s = todo.pop()
            if id(s) not in seen:
                seen[id(s)] = s
                todo.extend(self.deps(s))
        return list(seen.values())

    def deps(self, step: Step) -> list[Step]:
        """The steps that must finish before ``step``: its dependencies, or while it is pending
        the producers of the checkpoint outputs it waits on."""
        if step.pending:
            return [p for p in (self.producer.get(o) for o in step.waits_on) if isinstance(p, Step)]
        return step.deps

    # ---- errors -----------------------------------------------------------------------------

    def _error_for(self, failure: _Failure, target: str) -> FlowmakeError:
        if isinstance(failure.error, UnsafeWildcardError):
            return failure.error.for_target(target, failure.chain)
        if failure.error is not None:
            return failure.error
        if failure.kind is _FailureKind.CYCLE:
            return CycleError(" -> ".join(failure.chain), target=target)
        if failure.kind is _FailureKind.NORULE:
            hint = did_you_mean(target, self._index.known_names(target))
            return NoRuleError(
                f"{failure.path!r}: no rule produces it and it does not exist",
                target=target,
                hint=hint,
            )
        rule = failure.rule
        return MissingInputError(f"{failure.path!r} does not exist and no rule can produce it",
                                 location=rule.location if rule else None,
                                 rule=rule.name if rule else None, target=target,
                                 details=failure.chain)


def _pick_failure(failures: list[_Failure]) -> _Failure:
    return min(failures, key=lambda f: _KIND_ORDER[f.kind])  # the first of the most preferred kind


_KIND_ORDER = {kind: i for i, kind in enumerate(_FailureKind)}  # the order the enum declares
