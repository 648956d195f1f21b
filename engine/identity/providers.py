"""onnxruntime execution providers for a device choice ("cpu", "cuda" or "auto")."""

from __future__ import annotations

from ..errors import EngineError


def onnx_providers(device: str = "auto") -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise EngineError(f"unknown device {device!r}; use cpu, cuda or auto", code="bad_device")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise EngineError("CUDA was asked for but this onnxruntime has no CUDA provider "
                          f"(available: {', '.join(available)})", code="no_cuda",
                          hint="install onnxruntime-gpu, or use --device cpu")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
