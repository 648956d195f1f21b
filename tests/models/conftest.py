"""Fixtures for the models tests: a loopback recorder standing in for the network, and models
folders seeded with Hub-like strings. Helpers live in models_testkit.py.

Only loopback addresses are ever used: the recorder listens on 127.0.0.1 and answers every
request with 403, so a client that tries to go online fails fast and the attempt is recorded.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # importlib mode: make models_testkit importable

from models_testkit import LoopbackRecorder, replace_configs_with_strings, seed_hub_names  # noqa: E402


@pytest.fixture(scope="module")
def recorder():
    server = LoopbackRecorder()
    # The recorder itself works: a connection to it is seen (so "no attempts" means something).
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=2) as probe:
        probe.sendall(b"GET /probe HTTP/1.1\r\n\r\n")
        probe.recv(100)
    assert server.take() == ["GET /probe HTTP/1.1"]
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def seeded_models(tiny_models_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seeded") / "models"
    shutil.copytree(tiny_models_root, root)
    seed_hub_names(root)
    return root


@pytest.fixture(scope="module")
def string_config_models(tiny_models_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("strings") / "models"
    shutil.copytree(tiny_models_root, root)
    replace_configs_with_strings(root)
    return root
