"""What a person sees while a run goes on: a live status line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """Counts and prints. On a TTY one status line (done / running / failed / total, ETA) is redrawn
    in place under the job lines; elsewhere every event is one plain line, so logs stay readable."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False, tty: bool | None = None,
                 started: float | None = None) -> None:
        self.out = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.out.isatty() if tty is None else tty
        self.total = 0
        self.done = 0
        self.running = 0
        self.failed = 0
        self.t0 = time.monotonic() if started is None else started  # the summary counts planning too
        self._status_shown = False
        self._last_draw = 0.0
        self._job_time = 0.0
        self.cache_words = ""  # the shared cache's part of the summary (cache_setup.summary_part)

    # ---- events -------------------------------------------------------------------------------

    def started(self, step: Any, plan: Any, command: str | None) -> None:
        self.running += 1
        if not self.quiet:
            msg = step.instance.message() if step.instance is not None else None
            reasons = "; ".join(str(r) for r in plan.reasons) if plan is not None else ""
            line = f"[{self._counter()}] {step.rule.name}: {msg or ', '.join(step.outputs) or step.id}"
            if reasons:
                line += f"  ({reasons})"
            self._line(line)
            if command:
                self._line("    " + command.strip().replace("\n", "\n    "))
        self._status()

    def finished(self, step: Any, *, ok: bool, why: str = "", log: str = "") -> None:
        self.running -= 1
        if ok:
            self.done += 1
        else:
            self.failed += 1
            self._line(f"FAILED {step.id}: {why}" + (f"\n    log: {log}" + _tail(log) if log else ""), force=True)
        self._status()

    def requeued(self) -> None:
        """A job ended and will run again (retry, lost host): it is no longer running."""
        self.running -= 1
        self._status()

    def cutoff(self, step: Any) -> None:
        self.done += 1
        self._line(f"[{self._counter()}] {step.id}: skipped, early cutoff: its inputs are unchanged after upstream reran")
        self._status()

    def skipped(self, step: Any, why: str) -> None:
        """A step that needed no job after all (another invocation built it)."""
        self.done += 1
        self._line(f"[{self._counter()}] {step.id}: {why}", force=True)
        self._status()

    def note(self, text: str) -> None:
        self._line(text, force=True)

    def summary(self, ran: int, cut_off: int, failed: int, interrupted: bool, hashed: int = 0,
                extra: str = "") -> None:
        self._clear_status()
        if self.quiet and not failed and not interrupted:
            return
        secs = time.monotonic() - self.t0
        parts = [f"{ran} step{'s' if ran != 1 else ''} ran"]
        if cut_off:
            parts.append(f"{cut_off} step{'s' if cut_off != 1 else ''} skipped by early cutoff")
        if self.cache_words:
            parts.append(self.cache_words)
        if failed:
            parts.append(f"{failed} failed")
        if interrupted:
            parts.append("interrupted")
        # Files read to digest them: a no-op over unchanged files reads none (stats only).
        print(", ".join(parts) + f" in {secs:.1f} s; {hashed} file{'s' if hashed != 1 else ''} hashed"
              + (f"; {extra}" if extra else ""), file=self.out)

    # ---- drawing -------------------------------------------------------------------------------

    def _counter(self) -> str:
        return f"{self.done + self.failed + self.running}/{self.total}"

    def _line(self, text: str, force: bool = False) -> None:
        if self.quiet and not force:
            return
        self._clear_status()
        print(text, file=self.out)

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\x1b[K")
            self._status_shown = False

    def _status(self) -> None:
        if not self.tty or self.quiet:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and self.running:
            return
        self._last_draw = now
        finished = self.done + self.failed
        eta = ""
        if finished and self.total > finished:
            rate = (now - self.t0) / finished
            eta = f"  ETA {_clock(rate * (self.total - finished))}"
        self.out.write(
            f"\r\x1b[K{finished}/{self.total} done, {self.running} running, {self.failed} failed{eta}"
        )
        self.out.flush()
        self._status_shown = True


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _tail(path: str, lines: int = 10) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            text = fh.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join("\n    | " + t for t in text)
