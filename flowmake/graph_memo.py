"""The graph memo: the last run's resolved graph, reused while nothing it was resolved from changed.

Resolving a plan backwards from its targets (matching every path against the rules, instantiating
every step, rendering every command to key it) is most of what a no-op of 100,000 steps costs.
When every rule is plain data (no input, params, threads or resources functions; no checkpoints),
the graph is a pure function of a few things, and the memo's *fingerprint* covers all of them:
flowmake's own code, the rule and config files' bytes, every rule as evaluated (``Rule.as_data``,
with the rule-file values its command names), the workflow settings, the config and the targets.
The one input it cannot cover is the file system: resolution asks "does this path exist?" (is it a
source file, can this candidate rule's inputs be found). The memo keeps every question with its
answer, and is used only when each is asked again (one ``stat`` each, which planning needs anyway)
and answered the same. This is ninja's manifest, regenerated automatically whenever it could differ.

For each step the memo also keeps the key it was verified or run with when it was saved, and the
input digests that key was computed from (only for rules whose key needs nothing outside the
fingerprint: no ``script:``, wrapper or notebook file, no container image, conda env or env
modules). Same fingerprint, so every key field but the inputs is what it was; same input
digests, so the same key: the planner, given these keys as ``Facts.known_key``, can decide
such a step without instantiating it or rendering its command
(``planner.plan_step``). A step whose inputs, trace or outputs differ takes the ordinary path, so
``-n`` still names the reason. Steps themselves carry nothing of the memo but their laziness
(``RestoredStep``).

The memo is one file, written whole to a temporary name and renamed, and checksummed (blake3 over
the payload, like the journal's frames): one flipped bit in a path would otherwise plan a path no
rule makes, on every run. An unreadable, foreign or damaged memo is ignored (it is a cache: the
graph is then resolved as if it did not exist, and the next run writes a good one).
"""

from __future__ import annotations

import functools
import io
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import flowmake
from flowmake import journal
from flowmake.digest import DIGEST_BYTES, hash_bytes
from flowmake.graph import Graph, Step
from flowmake.keys import canonical
from flowmake.patterns import BUILTIN_TYPES
from flowmake.planner import KnownKey, StepPlan
from flowmake.rules import AllDone, Instance, Rule, Workflow

MEMO_FILE = "graph.memo"
# Then the fingerprint, a newline, the payload's checksum, a newline, and the payload: the data
# pickled, read back by journal's unpickler of plain data (lists, strings, numbers) only.
_MAGIC = b"FMKMEMO2\n"
_CHECK_LEN = 2 * DIGEST_BYTES + 1  # hash_bytes' hex digits and the newline

KnownKeys = Mapping[Step, KnownKey]  # what ``restore`` returns and ``Facts.known_key`` reads
Current = Callable[[Step], "StepPlan | None"]  # the plan that keyed a step's current outputs, if they are


def fingerprint(workflow: Workflow, targets: Sequence[tuple[str, str]]) -> str | None:
    """Digest of everything the graph for ``targets`` is resolved from, but the file system; None
    when the workflow has functions whose results cannot be foreseen."""
    rules = []
    for rule in workflow.rules:
        data = rule.as_data()
        if data is None:
            return None
        rules.append(data)
    custom = [t for name, t in sorted(workflow.wildcard_types.items()) if BUILTIN_TYPES.get(name) is not t]
    for t in custom:  # a converter decides what matches; its code must be in a file we digest
        code = getattr(t.convert, "__code__", None)
        if t.convert is not None and (code is None or code.co_filename not in workflow.files):
            return None
    try:
        files = [[path, _file_digest(path)] for path in [*workflow.files, *workflow.configfiles]]
    except OSError:
        return None
    shell = workflow.shell_settings
    data = [_code_digest(), flowmake.__version__, files, rules, workflow.ruleorder,
            workflow.wildcard_constraints, [[t.name, t.regex] for t in custom],
            [shell.executable, shell.prefix, shell.suffix], workflow.config, workflow.container, list(targets)]
    return hash_bytes(canonical(data).encode("utf-8", "surrogateescape"))


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hash_bytes(f.read())


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """flowmake's own source: a changed resolver or key must not reuse graphs it did not make."""
    root = os.path.dirname(flowmake.__file__)
    parts = []
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts.append(f"{os.path.relpath(path, root)}\0{_file_digest(path)}\n")
    return hash_bytes("".join(parts).encode("utf-8", "surrogateescape"))


class ExistsLog:
    """The graph's ``exists``, remembering every question and answer for the memo."""

    def __init__(self, exists: Callable[[str], bool]) -> None:
        self._exists = exists
        self.asked: dict[str, bool] = {}

    def __call__(self, path: str) -> bool:
        answer = self.asked.get(path)
        if answer is None:
            answer = self.asked[path] = self._exists(path)
        return answer


class RestoredStep(Step):
    """A step from the graph memo. It keeps the wildcard values as spelled in its paths, and makes
    its bindings and instance when something first reads them: a no-op plan of 100,000 steps
    needs neither. Memo steps come only from workflows without checkpoints, so nothing it is
    instantiated against can be unfinished."""

    __slots__ = ("_raw",)

    def __init__(self, rule: Rule, raw: tuple[str, ...], outputs: tuple[str, ...], step_id: str,
                 deps: list[Step]) -> None:
        # Not Step.__init__: the id was computed when the step was first resolved.
        self.rule, self._bindings, self._raw, self.outputs, self.id = rule, None, raw, outputs, step_id
        self._instance, self.deps, self.waits_on, self.resolved = None, deps, (), True

    @property
    def bindings(self) -> Any:
        b = self._bindings
        if b is None:
            b = self._bindings = self.rule.bindings_from_raw(dict(zip(self.rule.wildcard_names, self._raw)))
        return b

    def raw_values(self) -> tuple[str, ...]:
        return self._raw

    @property
    def instance(self) -> Instance | None:
        inst = self._instance
        if inst is None and not self.waits_on:
            inst = self._instance = self.rule.instantiate(self.bindings, AllDone())
        return inst

    @instance.setter
    def instance(self, inst: Instance | None) -> None:
        self._instance = inst

    @property
    def pending(self) -> bool:
        return self._instance is None and bool(self.waits_on)


class GraphMemo:
    """A loaded memo: the questions resolution asked, and the steps it resolved."""

    def __init__(self, fp: str, data: list[Any]) -> None:
        self.fingerprint = fp
        self._rules, self._paths, self._answers, self._records, self._targets = data

    @classmethod
    def load(cls, store_dir: str, fp: str) -> GraphMemo | None:
        """The memo saved with this fingerprint, or None (absent, another fingerprint, damaged)."""
        head = _MAGIC + fp.encode() + b"\n"
        try:
            with open(os.path.join(store_dir, MEMO_FILE), "rb") as f:
                if f.read(len(head)) != head:
                    return None
                check = f.read(_CHECK_LEN)
                payload = f.read()
        except OSError:
            return None
        if check != hash_bytes(payload).encode() + b"\n":
            return None  # torn or flipped: the pickle may still load, with other paths in it
        try:
            data = journal.load_data(payload)
        except ValueError:
            return None
        if not isinstance(data, list) or len(data) != 5:
            return None
        return cls(fp, data)

    def asked(self) -> dict[str, bool]:
        """The questions and answers the memo was made with (still the same: see ``holds``)."""
        return dict(zip(self._paths, self._answers))

    def holds(self, exists: Callable[[str], bool]) -> bool:
        """Whether every question resolution asked has the same answer now."""
        return all(exists(p) is a for p, a in zip(self._paths, self._answers))

    def restore(self, workflow: Workflow, graph: Graph) -> tuple[list[Step], dict[Step, KnownKey]]:
        """Put the memo's steps into an empty graph, as resolving the targets would have. Returns
        them as ``graph.walk()`` would (they were saved in that order), and the key kept for each
        step that has one (for ``Facts.known_key``)."""
        rules = [workflow.rule(name) for name in self._rules]
        steps: list[Step] = []
        known: dict[Step, KnownKey] = {}
        for rule_index, raw, outputs, step_id, deps, entry in self._records:
            step = RestoredStep(rules[rule_index], raw, outputs, step_id, [steps[i] for i in deps])
            if entry is not None:
                known[step] = entry
            steps.append(step)
        graph.restore(steps, [steps[t] if isinstance(t, int) else t for t in self._targets])
        return steps, known

    def unchanged(self, steps: Iterable[Step], current: Current, trace: Callable[[str], Any],
                  known: KnownKeys) -> bool:
        """Whether saving again would write what was loaded (a no-op run writes nothing)."""
        get = known.get
        for s in steps:
            kept = get(s)
            if entry_of(s, current(s), trace, kept) != kept:
                return False
        return True


def entry_of(step: Step, sp: StepPlan | None, trace: Callable[[str], Any],
             known: KnownKey | None) -> KnownKey | None:
    """(key, inputs) to keep for a step whose outputs are current (``sp``: the plan that keyed them;
    ``known``: the key it had in the memo, if any): only a key its traces hold, that nothing outside
    the fingerprint went into."""
    if sp is None or sp.key is None or not step.outputs:
        return None
    if known is not None and sp.key is known[0] and sp.inputs is known[1]:  # decided from the memo
        return known
    rule = step.rule
    if rule.key_beyond_fingerprint or rule.container:
        return None
    for out in step.outputs:
        t = trace(out)
        if t is None or t.key != sp.key:
            return None
    return (sp.key, sp.inputs)


def keep(used: GraphMemo | ExistsLog | None, fp: str | None, store: Any, workflow: Workflow, graph: Graph,
         steps: Sequence[Step], current: Current, known: KnownKeys) -> None:
    """Save the memo after a run (``used``: the memo restored, or what resolution asked; ``known``:
    the keys the restored memo kept), unless it would write what it read. ``current(step)``: the
    plan that keyed a step's current outputs."""
    if fp is None or used is None:
        return
    trace = store.traces.get
    if isinstance(used, GraphMemo):
        if used.unchanged(steps, current, trace, known):
            return
        asked = used.asked()
    else:
        asked = used.asked
    save(store.path, fp, workflow, graph, steps, current, trace, asked, known)


def save(store_dir: str, fp: str, workflow: Workflow, graph: Graph, steps: Sequence[Step],
         current: Current, trace: Callable[[str], Any], asked: Mapping[str, bool],
         known: KnownKeys) -> None:
    """Write the memo for this graph (``steps``: all of it, dependencies first)."""
    index = {id(s): i for i, s in enumerate(steps)}
    rule_index = {r.name: i for i, r in enumerate(workflow.rules)}
    get = known.get
    records = [(rule_index[s.rule.name], s.raw_values(), s.outputs, s.id, tuple(index[id(d)] for d in s.deps),
                entry_of(s, current(s), trace, get(s))) for s in steps]
    targets = [index[id(t)] if isinstance(t, Step) else t for t in graph.targets]
    data = [[r.name for r in workflow.rules], list(asked), list(asked.values()), records, targets]
    path = os.path.join(store_dir, MEMO_FILE)
    _clean_tmps(store_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        buf = io.BytesIO()
        journal.dump_data(data, buf)
        payload = buf.getvalue()
        with open(tmp, "wb") as f:
            f.write(b"%s%s\n%s\n" % (_MAGIC, fp.encode(), hash_bytes(payload).encode()))
            f.write(payload)
        os.replace(tmp, path)  # whole or not at all; the last of two concurrent writers wins
    except OSError:  # a cache: failing to write it costs the next run time, nothing else
        journal.unlink_quiet(tmp)


def _clean_tmps(store_dir: str) -> None:
    """Temporary memos of writers killed mid-write (over an hour old: none is still writing)."""
    now = time.time()
    try:
        for name in os.listdir(store_dir):
            if name.startswith(MEMO_FILE + ".") and name.endswith(".tmp"):
                p = os.path.join(store_dir, name)
                if now - os.stat(p).st_mtime > 3600:
                    journal.unlink_quiet(p)
    except OSError:
        pass
