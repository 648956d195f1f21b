"""The one download path, end to end: `fetch-models --yes` in a child process downloads through
huggingface_hub from a Hub stand-in on 127.0.0.1 (HF_ENDPOINT), only at the pinned revisions,
converts Arc2Face's pickled encoder, and leaves a folder that passes every check. The stand-in
serves the tiny models' files (a test double for huggingface.co; the client code is the real one)."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading

import torch
from models_testkit import run_engine
from safetensors.torch import load_file

from engine.models import (ARC2FACE_REPO, ARC2FACE_REVISION_UNVERIFIED, SD15_REPO, SD15_REVISION, verify_folder)

PINNED = {SD15_REPO: SD15_REVISION, ARC2FACE_REPO: ARC2FACE_REVISION_UNVERIFIED}


class FakeHub(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mirror):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.mirror, self.requests = mirror, []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _file(self):
        self.server.requests.append((self.command, self.path))
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return None, None
        repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        path = self.server.mirror / repo / name
        if PINNED.get(repo) != revision or not path.is_file():
            return None, None
        return path.read_bytes(), revision

    def _answer(self, body_too):
        data, revision = self._file()
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("X-Repo-Commit", revision)
        self.end_headers()
        if body_too:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)


def test_fetch_models_downloads_pinned_files_through_huggingface_hub(tiny_models_root, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(tiny_models_root / "sd15", mirror / SD15_REPO)
    shutil.copytree(tiny_models_root / "arc2face", mirror / ARC2FACE_REPO)
    encoder = mirror / ARC2FACE_REPO / "encoder"
    weights = {k: v.clone() for k, v in load_file(encoder / "model.safetensors").items()}
    (encoder / "model.safetensors").unlink()
    torch.save(weights, encoder / "pytorch_model.bin")  # published as a pickle, like Arc2Face
    (mirror / SD15_REPO / "tokenizer" / "special_tokens_map.json").write_text("{}")
    hub = FakeHub(mirror)
    try:
        env = {**__import__("os").environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "IDTO3D_MODELS": str(tmp_path / "none"),
               "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "IDTO3D_OFFLINE_SET_BY_ENGINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                     "http_proxy", "https_proxy", "all_proxy"):
            env.pop(name, None)
        root = tmp_path / "models"
        done = run_engine(env, "fetch-models", "--models", str(root), "--only", "sd15", "arc2face", "--yes")
    finally:
        hub.shutdown()
        hub.server_close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sd15: ok" in done.stdout and "arc2face: ok" in done.stdout
    files = [path for _, path in hub.requests if "/resolve/" in path]
    assert files and all(f"/resolve/{PINNED[SD15_REPO]}/" in p or f"/resolve/{PINNED[ARC2FACE_REPO]}/" in p
                         for p in files)
    assert verify_folder("sd15", root / "sd15") == [] and verify_folder("arc2face", root / "arc2face") == []
    unet = "arc2face/diffusion_pytorch_model.safetensors"
    assert (root / "arc2face" / unet).read_bytes() == (tiny_models_root / "arc2face" / unet).read_bytes()
    converted = load_file(root / "arc2face" / "encoder" / "model.safetensors")
    assert converted.keys() == weights.keys() and all(torch.equal(converted[k], weights[k]) for k in weights)
    assert not list(root.rglob(".fetch-*"))  # no staging left behind
