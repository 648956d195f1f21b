"""onnxruntime providers for a device choice; with CUDA the CUDA/cuDNN libraries are preloaded.

No GPU here: ``CudaOnnxRuntime`` is a TEST DOUBLE for onnxruntime-gpu on a CUDA machine (it lists
the CUDA provider and records ``preload_dlls`` calls).
"""

from __future__ import annotations

import pytest

from engine.errors import EngineError
from engine.identity import providers


class CudaOnnxRuntime:
    """TEST DOUBLE: onnxruntime-gpu's provider list and ``preload_dlls``."""

    def __init__(self, cuda: bool):
        self.cuda, self.preloaded = cuda, 0

    def get_available_providers(self):
        return (["CUDAExecutionProvider"] if self.cuda else []) + ["CPUExecutionProvider"]

    def preload_dlls(self):
        self.preloaded += 1


def test_cuda_provider_first_with_its_libraries_preloaded(monkeypatch):
    import sys

    ort = CudaOnnxRuntime(cuda=True)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    assert providers.onnx_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort.preloaded == 1
    assert providers.onnx_providers("cpu") == ["CPUExecutionProvider"] and ort.preloaded == 1
    cpu_only = CudaOnnxRuntime(cuda=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", cpu_only)
    assert providers.onnx_providers("auto") == ["CPUExecutionProvider"] and cpu_only.preloaded == 0
    with pytest.raises(EngineError) as caught:
        providers.onnx_providers("cuda")
    assert caught.value.code == "no_cuda"
