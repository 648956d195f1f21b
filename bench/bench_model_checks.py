"""Cost of the model-file checks (engine.models.verify_file) on files of the real sizes.

Writes, in a temporary folder: a ~250 MB recognition-style ONNX (the size of Arc2Face's
arcface.onnx), a ~335 MB safetensors file (the SD 1.5 VAE's size) and a ~490 MB torch checkpoint
(Arc2Face's encoder/pytorch_model.bin). Times each check, and for the ONNX file compares the
check used (onnx.load without external data) with creating an onnxruntime session, the other
way of proving a graph is usable. Each check runs in its own process, so its peak RSS growth
(VmHWM after the check minus after the imports) is its own.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_model_checks.py
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import best_of  # noqa: E402  (bench/timing.py, beside this script)


def _rss_mb() -> float:
    """Peak RSS of this process (VmHWM: unlike ru_maxrss it is not inherited through fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024




def one(kind: str, path: str) -> None:
    """Child process: time one check (best of 3) and print seconds and peak RSS growth in MiB."""
    import onnxruntime as ort

    from engine.models import verify_file

    def check():
        if kind == "session":
            ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        else:
            verify_file(Path(path), kind)

    import onnx  # noqa: F401  (imported before the baseline, as in the doctor)

    base = _rss_mb()
    seconds = best_of(3, check)
    print(seconds, _rss_mb() - base)


def main() -> None:
    import numpy as np
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = np.random.default_rng(0).standard_normal((512, 122_000), dtype=np.float32)  # ~250 MB
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 122_000])],
            initializer=[numpy_helper.from_array(weights, "w")])
        onnx_path = tmp / "arcface.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(onnx_path))
        del weights
        st_path = tmp / "vae.safetensors"
        save_file({"w": torch.zeros(335 * 2**20 // 4)}, str(st_path))
        bin_path = tmp / "pytorch_model.bin"
        torch.save({"w": torch.zeros(490 * 2**20 // 4)}, bin_path)

        rows = []
        for label, kind, path in (
            ("safetensors header+length (335 MB)", "safetensors", st_path),
            ("torch zip structure (490 MB)", "torch_pickle", bin_path),
            ("onnx.load, no external data (250 MB) [the check]", "onnx", onnx_path),
            ("onnxruntime session, CPU (250 MB) [alternative]", "session", onnx_path),
        ):
            out = subprocess.run([sys.executable, __file__, "--one", kind, str(path)], capture_output=True,
                                 text=True, check=True).stdout.split()
            rows.append((label, float(out[0]), float(out[1])))
        size = {p.name: p.stat().st_size / 2**20 for p in (onnx_path, st_path, bin_path)}
    print(f"file sizes (MiB): {', '.join(f'{k} {v:.0f}' for k, v in size.items())}")
    print(f"{'check':<52} {'best of 3 (s)':>14} {'peak RSS growth (MiB)':>22}")
    for label, seconds, rss in rows:
        print(f"{label:<52} {seconds:>14.4f} {rss:>22.0f}")
    print(f"ratio onnxruntime session / onnx.load: {rows[3][1] / rows[2][1]:.1f}x")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3])
    else:
        main()
