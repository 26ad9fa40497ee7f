"""The shared cache in a run: restoring the steps the plan restores, publishing the steps that ran.

``Scheduler`` inherits ``CacheRuns``. A RESTORE step (``cache_plan``) is a cheap job under its
output locks: its outputs are placed from the cache (each blob checked while it streams, each file
renamed into place with its mode), entered into the stat cache with the digests the manifest
vouches for (nothing restored is read again) and traced with them; a hit nothing needs on disk is
only traced, marked as left in the cache. A damaged entry (``CacheCorrupt``) or a store that cannot
be read makes the step run instead, after the inputs it then needs are placed.

A step that ran publishes after it succeeded, its outputs checked out and its inputs did not change
while it ran: blobs first, its manifest last (``Cache.publish``), in a small thread pool off the
scheduler's thread; the run waits for what it queued before it exits. A failed, cancelled or killed
step publishes nothing; after Ctrl-C nothing queued but not begun is published.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from flowmake import envs
from flowmake.cache_plan import NOT_RESTORED, IN_CACHE_FIELD, Restore, cacheable, in_cache_fields
from flowmake.capacity import NOTHING, Need
from flowmake.errors import CacheError
from flowmake.graph import Step
from flowmake.namedlist import Flag
from flowmake.pipes import real_outputs
from flowmake.planner import Decision, Reason, ReasonKind, with_current_key
from flowmake.records import Trace
from flowmake.step_state import StepRecord, StepState

if TYPE_CHECKING:
    from flowmake.cache import Cache
    from flowmake.digest import Digester
    from flowmake.jobs import JobContext
    from flowmake.locks import OutputLocks
    from flowmake.planner import Plan
    from flowmake.progress import Progress
    from flowmake.store import Store

PUBLISHERS = 4  # uploads at once: enough to hide an S3 round trip, few enough for a shared NFS
RESTORERS = 4  # restores placing files at once, likewise


@dataclass
class CacheStats:
    restored: list[str] = field(default_factory=list)  # steps whose outputs were placed
    left: list[str] = field(default_factory=list)  # hits traced as left in the cache
    restored_bytes: int = 0
    published: int = 0  # steps published
    published_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


class CacheRuns:
    plan: Plan
    store: Store
    ctx: JobContext
    progress: Progress
    _unlock: list[str]
    _interrupt: bool
    _groups: dict[int, Any]
    _complete: Callable[[StepRecord, StepState], None]
    _count: Callable[[StepRecord], None]
    _push: Callable[[StepRecord], None]
    _running: dict[int, StepRecord]
    locks: OutputLocks

    cache: Cache | None = None  # set by use_cache; class defaults so a run without one pays nothing
    _may_cache: Callable[[Step], bool] = staticmethod(cacheable)
    _pool: concurrent.futures.ThreadPoolExecutor | None = None
    _restores: _Restores | None = None
    _asked: frozenset[int] = frozenset()

    def use_cache(self, cache: Cache, digester: Digester, may_cache: Callable[[Step], bool] = cacheable,
                  asked: frozenset[int] = frozenset(), lookup: Callable[[str], Any] | None = None) -> None:
        """``asked``: the steps (by id) planning looked up already; a miss is not asked again.
        ``lookup``: planning's (``cache_setup.Lookup``: a store that failed is not asked again)."""
        self.cache = cache
        self._lookup = lookup or cache.lookup
        self._asked = asked
        self._digester = digester
        self._may_cache = may_cache
        self.cache_stats = CacheStats()
        self._damaged: dict[int, Any] = {}  # steps run because their entry was damaged -> its manifest
        self._stats_lock = threading.Lock()  # the pool's threads add to cache_stats
        self._publishing: list[concurrent.futures.Future[Any]] = []

    def _need(self, rec: StepRecord) -> Need:
        if rec.plan.decision is Decision.RESTORE:  # placing files takes no cores
            return NOTHING
        return super()._need(rec)  # type: ignore[misc]  # GroupRuns._need, next in the MRO

    def _spec(self, rec: StepRecord, recs: list[StepRecord], *, local: bool) -> Any:
        """The job's spec, saying whether its outputs will be published (``_publish`` decides the
        same from the same facts): a backend with the cache's data plane uploads them itself."""
        spec = super()._spec(rec, recs, local=local)  # type: ignore[misc]  # GroupRuns._spec
        cache, step = self.cache, rec.step
        if (cache is None or not cache.can_write or local or rec.plan.key is None or len(recs) > 1
                or id(step) in self._groups or not self._may_cache(step)):
            return spec
        return replace(spec, cache_outputs=True)

    # ---- restoring ----------------------------------------------------------------------------

    def _from_cache(self, rec: StepRecord) -> bool:
        """A step about to start: restored instead, when planning said so, or when its key is known
        only now (its upstream ran) and the cache holds it."""
        if rec.plan.decision is Decision.RESTORE:
            return self._restored(rec)
        cache, step = self.cache, rec.step
        if (cache is None or not cache.can_read or id(step) in self._asked or id(step) in self._damaged
                or id(step) in self._groups
                or any(r.kind in NOT_RESTORED for r in rec.plan.reasons) or not self._may_cache(step)):
            return False
        keyed = with_current_key(rec.plan, self.plan.facts)
        if keyed is None or keyed.key is None:
            return False
        manifest = self._lookup(keyed.key)  # never raises: a store that fails is a warning, and the step runs
        if manifest is None or any(o not in manifest.outputs for o in step.outputs):
            return False
        self.plan.restores[id(step)] = Restore(manifest, True)
        rec.plan = replace(keyed, decision=Decision.RESTORE, reasons=[Reason(ReasonKind.CACHE_HIT)])
        return self._restored(rec)

    def _restored(self, rec: StepRecord) -> bool:
        """Carry out a RESTORE step under its locks; False: it must run instead (its plan says why).
        Placing files goes to a few threads while there is room (the scheduler's loop polls them
        like a backend), else it happens here."""
        step = rec.step
        r = self.plan.restores.get(id(step))
        cache = self.cache
        if r is None or cache is None:
            rec.plan = replace(rec.plan, decision=Decision.RUN, reasons=[Reason(ReasonKind.MISSING, path=step.outputs[0])])
            return False
        if not r.place:  # a hit nothing needs on disk: only traced, marked as left in the cache
            self.cache_stats.left.append(step.id)
            self.progress.done += 1
            self._trace_restored(step, rec, r.manifest.outputs, placed=False)
            self._unlock.append(step.id)
            self._complete(rec, StepState.DONE)
            return True
        self.store.begin(step.id, list(step.outputs), None)  # killed while placing: incomplete, rerun
        self.progress.started(step, rec.plan, None)
        restores = self._restores
        if restores is None:
            restores = self._restores = _Restores(self)
        if len(restores.futures) < 4 * RESTORERS:
            fut = restores.pool.submit(cache.restore, r.manifest, self.ctx.workdir)
            restores.futures[fut] = (rec, r)
            rec.state, rec.backend, rec.handle = StepState.RUNNING, restores, fut  # type: ignore[assignment]  # polled, never submitted to
            self._running[id(fut)] = rec
            return True
        try:
            done = cache.restore(r.manifest, self.ctx.workdir)
        except (CacheError, OSError) as e:  # CacheCorrupt included: nothing bad was placed
            self._restore_failed(rec, r, e)
            return False
        self._restore_placed(rec, r, done)
        return True

    def _restore_done(self, fut: concurrent.futures.Future[Any], rec: StepRecord, r: Restore) -> None:
        """A restore placed by a thread: finished here, on the scheduler's thread."""
        self._running.pop(id(fut), None)
        rec.backend = rec.handle = None
        try:
            done = fut.result()
        except (CacheError, OSError) as e:
            self._restore_failed(rec, r, e)
            self.locks.release(rec.step.id)
            self._push(rec)  # queued again: it runs as a job, within the cores
            return
        self._restore_placed(rec, r, done)

    def _restore_placed(self, rec: StepRecord, r: Restore, done: Any) -> None:
        step = rec.step
        for path, digest in done.files.items():
            self._digester.record(path, digest)
        for out in step.outputs:
            self._digester.invalidate(out)  # a folder's digest is taken afresh (its files are known)
        self.cache_stats.restored_bytes += done.bytes
        self.cache_stats.restored.append(step.id)
        self._trace_restored(step, rec, r.manifest.outputs, placed=True)
        self.store.end(step.id)
        self._unlock.append(step.id)
        self.progress.finished(step, ok=True)
        self._complete(rec, StepState.DONE)

    def _restore_failed(self, rec: StepRecord, r: Restore, e: Exception) -> None:
        """The step runs instead: said, its lost blobs to be put back, the inputs it reads placed."""
        step = rec.step
        self.store.end(step.id)
        self.progress.requeued()
        self.progress.note(f"warning: {step.id}: {e}; it runs instead")
        self._damaged[id(step)] = r.manifest  # its publish puts back what the store lost
        rec.plan = replace(rec.plan, decision=Decision.RUN,
                           reasons=[Reason(ReasonKind.MISSING, path=getattr(e, "path", None) or step.outputs[0])])
        self._place_inputs(step)
        # Its software was not set up for a restore (envs.prepare skips an env already made).
        envs.prepare([step.rule], self.ctx.deployment, self.ctx.workdir, self.progress.note)

    def _trace_restored(self, step: Step, rec: StepRecord, digests: Any, *, placed: bool) -> None:
        sp = rec.plan
        if sp.texts is None or sp.key is None:
            return
        fields = sp.fields or {}
        if not placed:
            fields = in_cache_fields(fields)
        now = time.time()
        self.store.put_traces([Trace(output=o, rule=step.rule.name, key=sp.key, fields=fields, inputs=tuple(sp.inputs),
                                     output_digest=digests[o], step_id=step.id, time=now)
                               for o in real_outputs(step)])

    def _place_inputs(self, step: Step) -> None:
        """A restore that failed runs instead: the inputs its upstream left in the cache are placed."""
        cache = self.cache
        if cache is None:
            return
        for dep in step.deps:
            missing = [p for p in step.inputs if p in dep.outputs and not os.path.lexists(os.path.join(self.ctx.workdir, p))]
            if not missing:
                continue
            r = self.plan.restores.get(id(dep))
            manifest = r.manifest if r is not None else None
            if manifest is None:
                tr = self.store.trace(missing[0])
                manifest = self._lookup(tr.key) if tr is not None and tr.fields.get(IN_CACHE_FIELD) else None
            if manifest is None:
                continue  # the job fails on its missing input, and says so
            try:
                done = cache.restore(manifest, self.ctx.workdir, [p for p in missing if p in manifest.outputs])
            except (CacheError, OSError) as e:
                self.progress.note(f"warning: {dep.id}: {e}")
                continue
            for path, digest in done.files.items():
                self._digester.record(path, digest)
            for path in missing:
                self._digester.invalidate(path)
            self.cache_stats.restored_bytes += done.bytes
            self.store.put_traces([replace(t, fields={k: v for k, v in t.fields.items() if k != IN_CACHE_FIELD})
                                   for p in missing if (t := self.store.trace(p)) is not None])

    # ---- publishing ---------------------------------------------------------------------------

    def _publish(self, rec: StepRecord, changed: list[str]) -> None:
        """Queue a step that just succeeded for the cache (not when its inputs moved under it)."""
        cache = self.cache
        if cache is None or not cache.can_write or changed or self._interrupt:
            return
        step, sp = rec.step, rec.plan
        if sp.key is None or id(step) in self._groups or not self._may_cache(step):
            return
        inst = step.instance
        products = [*real_outputs(step), *(inst.log if inst is not None else ()),
                    *([inst.benchmark] if inst is not None and inst.benchmark else [])]
        workdir = self.ctx.workdir
        products = [p for p in dict.fromkeys(products) if os.path.lexists(os.path.join(workdir, p))]
        try:  # digests taken here, on the scheduler's thread: the digester is not shared with the pool
            from flowmake.cache import describe

            manifest = describe(sp.key, products, workdir, self._digester.digest)
        except (CacheError, OSError) as e:
            self.cache_stats.warnings.append(f"{step.id}: not published: {e}")
            return
        table = {f.path: f.digest for f in manifest.files}
        table.update(manifest.outputs)
        damaged = self._damaged.pop(id(step), None)
        if damaged is not None:  # the entry exists, so publish adds nothing: its lost blobs go back
            lost = [(f.digest, os.path.join(workdir, f.path)) for f in damaged.files if table.get(f.path) == f.digest]
            self._published(step.id, lambda: _put_back(cache, lost))
            return
        temp = inst is not None and step.rule.may_flag and any(Flag.TEMP in inst.flags.get(o, ()) for o in step.outputs)
        if temp:  # a temp() output may go as soon as its readers finish: published before
            self._published(step.id, lambda: cache.publish(sp.key, products, workdir, table.get))  # type: ignore[arg-type]  # checked above
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(PUBLISHERS, thread_name_prefix="flowmake-publish")
        self._publishing.append(self._pool.submit(self._published, step.id,
                                                  lambda: cache.publish(sp.key, products, workdir, table.get)))  # type: ignore[arg-type]

    def _published(self, step_id: str, publish: Callable[[], Any]) -> None:
        try:
            done = publish()
        except Exception as e:  # a store that fails costs the entry, never the run
            with self._stats_lock:
                self.cache_stats.warnings.append(f"{step_id}: not published to the cache: {e}")
            return
        with self._stats_lock:
            self.cache_stats.published += 1
            self.cache_stats.published_bytes += done.bytes

    def finish_publishing(self) -> None:
        """Wait for the uploads queued; after Ctrl-C those not begun are dropped."""
        if self._restores is not None:
            self._restores.pool.shutdown(wait=True)
            self._restores = None
        pool = self._pool
        if pool is None:
            return
        pool.shutdown(wait=True, cancel_futures=self._interrupt)
        self._pool = None


def _put_back(cache: Any, blobs: list[tuple[str, str]]) -> Any:
    """The blobs a damaged entry lost, from files that were just made with those very digests."""
    from flowmake.cache import Published

    done = Published()
    for digest, path in blobs:
        if not cache.store.has_blob(digest):
            cache.store.write_blob(digest, path)
            done.blobs += 1
            done.bytes += os.path.getsize(path)
    return done


class _Restores:
    """The restores in flight, as the scheduler's poll loop sees a backend: ``poll`` finishes those
    whose files are placed (on the scheduler's thread) and reports no job events of its own."""

    name = "cache"

    def __init__(self, runs: CacheRuns) -> None:
        self.runs = runs
        self.pool = concurrent.futures.ThreadPoolExecutor(RESTORERS, thread_name_prefix="flowmake-restore")
        self.futures: dict[concurrent.futures.Future[Any], tuple[StepRecord, Restore]] = {}

    def capacity(self) -> int:
        return RESTORERS

    def poll(self, timeout: float) -> list[Any]:
        done, _ = concurrent.futures.wait(list(self.futures), timeout, concurrent.futures.FIRST_COMPLETED)
        for fut in done:
            rec, r = self.futures.pop(fut)
            self.runs._restore_done(fut, rec, r)
        return []

    def cancel(self, handle: Any) -> None:  # a restore cannot be stopped halfway: it finishes whole or not at all
        pass
