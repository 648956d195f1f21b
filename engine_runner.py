"""Start the engine (``python -m engine ...``) in the Python that has torch.

The add-on never imports torch: it runs the engine as a separate process, in the interpreter the
user chose in the preferences, with the extension folder (which holds ``engine/``) on PYTHONPATH.
Standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ADDON_DIR = Path(__file__).resolve().parent
PYTHON_ENV = "IDTO3D_PYTHON"


class EngineNotFound(RuntimeError):
    """The engine's Python is not configured or not usable."""


def engine_python(prefs) -> str:
    """The interpreter that runs the engine: preferences, else $IDTO3D_PYTHON, else this Python."""
    chosen = (getattr(prefs, "python_executable", "") or os.environ.get(PYTHON_ENV, "")).strip()
    if not chosen:
        return sys.executable
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise EngineNotFound(
            f"Engine Python {chosen!r} does not exist. Set Preferences > Add-ons > ID-to-3D Head > "
            "Engine Python to a python executable that has the engine's packages (docs/install.md)."
        )
    if not os.access(path, os.X_OK):
        raise EngineNotFound(f"Engine Python {chosen!r} is not executable.")
    return str(path)


def engine_environment(models_root: str | None = None) -> dict[str, str]:
    """The worker's environment: ours on PYTHONPATH, unbuffered output, the models root."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONHOME", "PYTHONPATH")}
    env["PYTHONPATH"] = str(ADDON_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if models_root:
        env["IDTO3D_MODELS"] = models_root
    return env


def engine_command(prefs, args: list[str]) -> list[str]:
    return [engine_python(prefs), "-m", "engine", *args]


def run_engine(prefs, args: list[str], timeout_s: float = 120.0, models_root: str | None = None) -> subprocess.CompletedProcess:
    """Run one engine command to completion and capture its text output.

    For short commands (doctor, photo checks). Long jobs use a background worker instead.
    """
    command = engine_command(prefs, args)
    try:
        return subprocess.run(
            command, cwd=str(ADDON_DIR), env=engine_environment(models_root), capture_output=True,
            text=True, encoding="utf-8", errors="replace", timeout=timeout_s, stdin=subprocess.DEVNULL,
        )
    except OSError as exc:  # not found, not executable, wrong architecture...
        raise EngineNotFound(f"could not start the engine's Python {command[0]!r}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineNotFound(
            f"the engine did not answer within {timeout_s:.0f} s ({' '.join(args[:1])}); "
            "check the Engine Python in the preferences"
        ) from exc


def start_engine_json(prefs, args: list[str], what: str, timeout_s: float = 120.0,
                      models_root: str | None = None):
    """Start an engine command that answers with one JSON object, in the background.

    Returns a :class:`worker_monitor.CommandMonitor`: ``pump()`` is None while it runs, then the
    answer (or raises :class:`worker_monitor.CommandFailed`); ``wait()`` blocks.
    """
    from .worker_monitor import CommandMonitor

    command = engine_command(prefs, args)
    try:
        return CommandMonitor(command, cwd=str(ADDON_DIR), env=engine_environment(models_root), what=what,
                              timeout_s=timeout_s)
    except OSError as exc:
        raise EngineNotFound(f"could not start the engine's Python {command[0]!r}: {exc}") from exc


def run_engine_json(prefs, args: list[str], what: str, timeout_s: float = 120.0,
                    models_root: str | None = None) -> dict:
    """Run an engine command that prints one JSON object (``--json``) and return that object.

    Raises :class:`EngineNotFound` naming ``what`` failed, the exit code and the last line the
    engine printed, when the output is not JSON (the usual sign of a Python without its packages).
    """
    done = run_engine(prefs, args, timeout_s=timeout_s, models_root=models_root)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        lines = (done.stderr or done.stdout or "").strip().splitlines()
        raise EngineNotFound(
            f"The engine's Python could not run {what} (exit {done.returncode}): "
            f"{lines[-1] if lines else 'no output'}. Is it the Python with the engine's packages?") from None
