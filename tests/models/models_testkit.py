"""Helpers for the models tests (imported by conftest.py and the tests; see conftest.py)."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HUB_LIKE = "someone/repo"


class _Recorder(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(2.0)
        try:
            first = self.request.recv(4096).split(b"\r\n", 1)[0].decode("latin-1", "replace")
        except OSError:
            first = "(no request line)"
        self.server.attempts.append(first or "(empty)")
        try:
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass


class LoopbackRecorder(socketserver.ThreadingTCPServer):
    """Records every connection made to it (proxy CONNECTs, proxied GETs, direct Hub calls)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.attempts: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def take(self) -> list[str]:
        taken, self.attempts[:] = list(self.attempts), []
        return taken


def online_env(recorder: LoopbackRecorder, home: Path) -> dict[str, str]:
    """The child's environment: no offline switches (the code's own behaviour is tested), every
    proxy variable and the Hub endpoint pointed at the recorder, caches and homes in ``home``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "NO_PROXY", "no_proxy",
                        "IDTO3D_OFFLINE_SET_BY_ENGINE")}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[name] = recorder.url
    env.update(HF_ENDPOINT=recorder.url, HF_HOME=str(home / "hf"), HF_HUB_CACHE=str(home / "hf" / "hub"),
               IDTO3D_MODELS=str(home / "no-default-models"), INSIGHTFACE_HOME=str(home / "insightface"),
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return env


def run_engine(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def run_python(env: dict[str, str], code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def seed_hub_names(root: Path) -> None:
    """Put Hub-like repository names into every config, keeping each a valid object."""
    for path in root.rglob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        data["_name_or_path"] = HUB_LIKE
        data["name_or_path"] = HUB_LIKE
        path.write_text(json.dumps(data), encoding="utf-8")


def replace_configs_with_strings(root: Path) -> list[Path]:
    """Every config file becomes the JSON string "someone/repo" (what diffusers reads as a repo id)."""
    changed = sorted(root.rglob("*.json"))
    for path in changed:
        path.write_text(json.dumps(HUB_LIKE), encoding="utf-8")
    return changed
