"""A subprocess's stderr read line by line in a thread, with bounded waits for lines."""

from __future__ import annotations

import re
import subprocess
import threading
import time


class StderrLog:
    """Collects ``proc``'s stderr (text mode); ``wait_for`` waits on a condition, never sleeps."""

    def __init__(self, proc: subprocess.Popen[str], timeout: float) -> None:
        self.proc = proc
        self.timeout = timeout  # default bound on any single wait
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def mark(self) -> int:
        """A position in the log; wait_for(since=mark) only looks at later lines."""
        with self._cond:
            return len(self.lines)

    def wait_for(
        self, pattern: str, count: int = 1, since: int = 0, timeout: float | None = None
    ) -> list[re.Match[str]]:
        """The first ``count`` lines after ``since`` matching ``pattern``; fails if the
        process ends or the timeout passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                matches = [m for line in self.lines[since:] if (m := regex.search(line))]
                if len(matches) >= count:
                    return matches
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError(
                        f"no {count} line(s) matching {pattern!r} "
                        f"({'process exited' if self._eof else 'timed out'}); log:\n"
                        + "".join(self.lines)
                    )
                self._cond.wait(remaining)

    def wait_exit(self, timeout: float | None = None) -> int:
        bound = self.timeout if timeout is None else timeout
        code = self.proc.wait(bound)
        self._reader.join(bound)
        return code
