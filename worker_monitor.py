"""Follow an engine process from Blender without ever blocking the UI (no bpy here).

:class:`WorkerMonitor` runs ``python -m engine run JOB_DIR``: a reader thread turns the worker's
stdout into lines on a queue, and :meth:`WorkerMonitor.pump` (called by a modal operator's timer,
or directly by tests and headless scripts) takes what has arrived, checks it with
:func:`engine.protocol.decode` and returns the messages. A worker that does not open with a
matching ``hello`` is stopped and reported, never trusted. stderr goes to a file in the job
folder so a failure can show its tail.

:class:`CommandMonitor` runs a short engine command that answers with one JSON object (doctor,
identity check) in the background the same way.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

from .engine import protocol

MAX_LINE_BYTES = protocol.MAX_LINE_BYTES  # a protocol line is small; anything longer is not the worker
STDERR_TAIL_LINES = 12
CANCEL_GRACE_S = 1.0  # the worker checks for cancel between steps; after this it is terminated
TERMINATE_GRACE_S = 0.5
EXIT_GRACE_S = 10.0  # a worker that said `done` and still runs after this is terminated
_EOF = object()


def tail(path: Path | None, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of a text file ('' when there is none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - 16384))
            text = stream.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _read_lines(stream, lines: queue.Queue) -> None:
    """Reader thread: whole lines (bytes) onto the queue; an over-long line as its ProtocolError."""
    try:
        while True:
            try:
                line = protocol.read_line(stream, MAX_LINE_BYTES)
            except protocol.ProtocolError as exc:  # drained already: the stream goes on
                lines.put(exc)
                continue
            if line is None:
                break
            lines.put(line)
    except (OSError, ValueError):
        pass
    finally:
        lines.put(_EOF)


def _stop_process(process: subprocess.Popen, grace_s: float) -> None:
    try:
        process.wait(timeout=grace_s)
        return
    except subprocess.TimeoutExpired:
        pass
    process.terminate()
    try:
        process.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class WorkerMonitor:
    """One worker process and what it has said so far."""

    def __init__(self, command: list[str], *, cwd: str, env: dict[str, str], stderr_path: Path):
        self.command = list(command)
        self.stderr_path = Path(stderr_path)
        self.hello: dict | None = None
        self.done: dict | None = None
        self.error: dict | None = None  # the worker's error message, or the monitor's own
        self.skipped_lines = 0
        self.cancel_requested_at: float | None = None
        self._reaper: threading.Thread | None = None
        self._protocol = protocol.Reader()
        self._lines: queue.Queue = queue.Queue()
        self._eof = False
        self._stderr = open(self.stderr_path, "wb")
        try:
            # A list of arguments, never a shell: user text reaches the worker only inside job.json.
            self.process = subprocess.Popen(
                self.command,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                bufsize=0,
            )
        except OSError:
            self._stderr.close()
            raise
        self._reader = threading.Thread(
            target=_read_lines,
            args=(self.process.stdout, self._lines),
            name="idto3d-worker-reader",
            daemon=True,
        )
        self._reader.start()

    @property
    def finished(self) -> bool:
        return self.done is not None

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def pump(self, max_messages: int = 500) -> list[dict]:
        """Messages that arrived since the last call, checked; never waits."""
        messages: list[dict] = []
        while not self.finished and len(messages) < max_messages:
            try:
                raw = self._lines.get_nowait()
            except queue.Empty:
                break
            if raw is _EOF:
                self._eof = True
                break
            messages.extend(self._take(raw))
        if self.cancel_requested_at is not None and self.process.poll() is None:
            if time.monotonic() - self.cancel_requested_at > CANCEL_GRACE_S:
                self.process.kill()  # it did not stop between steps: stop it now
        if self._eof and not self.finished and self.process.poll() is not None and self.cancel_requested_at:
            self.done = protocol.message("done", ok=False, code="cancelled")
            messages.append(self.done)
        if self._eof and not self.finished and self.process.poll() is not None:
            # The stream ended without `done`: the worker crashed or was killed.
            code = self.process.returncode
            messages.extend(
                self._fail(
                    "worker_exited",
                    f"The engine stopped unexpectedly (exit code {code}) before it finished the job.",
                    "See the engine's log below; fix what it names and press Resume or Generate Head again.",
                )
            )
        if self.finished:
            self._close_streams()
        return messages

    def _take(self, raw) -> list[dict]:
        """One line through the protocol's own reader (hello first, this version, nothing after done)."""
        try:
            msg = raw if isinstance(raw, Exception) else self._protocol.feed(raw)
        except protocol.ProtocolError as exc:
            msg = exc
        if not isinstance(msg, Exception):
            if msg["type"] == "hello":
                self.hello = msg
            elif msg["type"] == "error":
                self.error = msg
            elif msg["type"] == "done":
                self.done = msg
            return [msg]
        if self.hello is None:
            return self._fail(
                "protocol_error",
                f"The engine did not start with a valid greeting ({msg}).",
                "The engine's Python may run another program or another version of the "
                "engine: check Engine Python in the add-on's preferences.",
            )
        self.skipped_lines += 1  # after a good hello, a stray line is skipped, not trusted
        return [
            protocol.message(
                "warning",
                code="protocol_line_skipped",
                message=f"skipped a line that is not a protocol message ({msg})",
            )
        ]

    def _fail(self, code: str, message: str, hint: str) -> list[dict]:
        """The monitor's own failure: stop the worker and end the stream as the worker would."""
        self._kill()
        self.error = protocol.message("error", code=code, message=message, hint=hint)
        self.done = protocol.message("done", ok=False, code=code)
        return [self.error, self.done]

    def stderr_tail(self) -> str:
        return tail(self.stderr_path)

    def request_cancel(self) -> None:
        """Ask the worker to stop without waiting: a cancel line, then stdin closed.

        :meth:`pump` kills it if it is still running :data:`CANCEL_GRACE_S` later.
        """
        if self.cancel_requested_at is None:
            self.cancel_requested_at = time.monotonic()
        if self.process.poll() is None:
            try:
                self.process.stdin.write(protocol.encode(protocol.message("cancel")).encode("utf-8"))
                self.process.stdin.flush()
            except (OSError, ValueError):
                pass
        self._close_stdin()

    def stop_in_background(self) -> None:
        """Ask the worker to stop and leave the rest to the reaper thread (nothing will pump this
        monitor again: another file was loaded). Never waits."""
        self.request_cancel()
        self._close_streams()

    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """Ask the worker to stop and wait until it has (terminated after ``grace_s``)."""
        self.request_cancel()
        _stop_process(self.process, grace_s)

    def _kill(self) -> None:
        self._close_stdin()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _close_stdin(self) -> None:
        try:
            self.process.stdin.close()
        except (OSError, ValueError):
            pass

    def _close_streams(self) -> None:
        """After `done`: the worker should exit by itself; a reaper thread makes sure it does.

        Never waits here (this is the UI thread). After a cancel the worker gets what is left of
        :data:`CANCEL_GRACE_S`, otherwise :data:`EXIT_GRACE_S`, then it is terminated.
        """
        self._close_stdin()
        if self._reaper is None:
            if self.cancel_requested_at is not None:
                grace = max(0.0, CANCEL_GRACE_S - (time.monotonic() - self.cancel_requested_at))
            else:
                grace = EXIT_GRACE_S
            self._reaper = threading.Thread(
                target=self._reap, args=(grace,), name="idto3d-worker-reaper", daemon=True
            )
            self._reaper.start()

    def _reap(self, grace_s: float) -> None:
        _stop_process(self.process, grace_s)
        if not self._stderr.closed:
            self._stderr.close()

    def close(self) -> None:
        """Stop the worker if it still runs and release the files (unregister, quit)."""
        self.cancel()
        if self._reaper is not None:
            self._reaper.join(timeout=CANCEL_GRACE_S + TERMINATE_GRACE_S + 1)
        if not self._stderr.closed:
            self._stderr.close()


class CommandMonitor:
    """A short engine command that prints one JSON object, run in the background.

    :meth:`pump` returns None while it runs and the parsed object (or raises
    :class:`CommandFailed`) once it has ended; :meth:`wait` blocks for headless use.
    """

    def __init__(self, command: list[str], *, cwd: str, env: dict[str, str], what: str, timeout_s: float):
        self.what, self.timeout_s = what, timeout_s
        self.started = time.monotonic()
        self.timed_out = False
        self._answer: dict | None = None
        self._failure: Exception | None = None
        self._output: dict[str, bytes] = {}
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._thread = threading.Thread(target=self._collect, name="idto3d-command", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        stdout, stderr = self.process.communicate()
        self._output = {"stdout": stdout or b"", "stderr": stderr or b""}

    def pump(self) -> dict | None:
        if self._answer is not None:
            return self._answer
        if self._failure is not None:
            raise self._failure
        if self._thread.is_alive():
            if time.monotonic() - self.started > self.timeout_s:
                self.timed_out = True
                self.stop()
                self._failure = CommandFailed(
                    f"the engine did not answer within {self.timeout_s:.0f} s ({self.what}); "
                    "check the Engine Python in the preferences"
                )
                raise self._failure
            return None
        stdout = self._output.get("stdout", b"").decode("utf-8", errors="replace")
        try:
            answer = json.loads(stdout)
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except ValueError:
            text = self._output.get("stderr", b"").decode("utf-8", errors="replace") or stdout
            lines = text.strip().splitlines()
            self._failure = CommandFailed(
                f"The engine's Python could not run {self.what} (exit {self.process.returncode}): "
                f"{lines[-1] if lines else 'no output'}. Is it the Python with the engine's packages?"
            )
            raise self._failure from None
        self._answer = answer
        return answer

    def stderr_text(self) -> str:
        """What the command wrote on stderr (once it has ended)."""
        return self._output.get("stderr", b"").decode("utf-8", errors="replace")

    def wait(self, poll_s: float = 0.05) -> dict:
        while (answer := self.pump()) is None:
            time.sleep(poll_s)
        return answer

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self._thread.join(timeout=5)


class CommandFailed(RuntimeError):
    """A background engine command that did not answer with JSON."""
