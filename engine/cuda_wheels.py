"""Which PyTorch CUDA build a user's NVIDIA driver and GPU can run (standard library only).

Install Engine (the add-on) and Check GPU (``python -m engine doctor --gpu``) both ask this
module. The driver is read from ``nvidia-smi`` when it is on the PATH (never required); the
choice follows NVIDIA's minor-version compatibility rule: a build made with any CUDA 12.x toolkit
runs on a driver of the 525 branch or newer (525.60.13 on Linux, 527.41 on Windows: CUDA 12.0
GA's), a CUDA 13.x build on the 580 branch or newer. The caveat of that rule -- a GPU that
gets only PTX from the build needs the toolkit's own driver to JIT-compile it -- does not arise
where the build carries machine code (SASS) for the GPU, which the capability rules below
ensure (CUDA 13 dropped Maxwell, Pascal and Volta; Blackwell's sm_100/sm_120 SASS is in the
builds newer than 12.6). docs/install.md cites where each number comes from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

PINNED_TORCH = "2.13.0"
TORCH_INDEX = "https://download.pytorch.org/whl/{}"
CUDA12_FLOOR = ((525, 60, 13), (527, 41))  # (Linux, Windows): CUDA 12.0 GA, the 12.x family's minimum
CUDA13_FLOOR = ((580, 65, 6), (580,))  # Linux: CUDA 13.0 GA; Windows: the 580 branch (no toolkit driver listed)
# CUDA builds published for the pinned torch, newest first, with what each needs:
# (tag, CUDA version, minimum driver (Linux, Windows), lowest compute capability with kernels).
# Seen for torch 2.13.0: +cu126, +cu129, +cu130 (public lock files and manifests naming those
# wheels); cu130 is also the CUDA build PyPI's own torch 2.13.0 depends on (cuda-toolkit 13.0).
TORCH_CUDA_BUILDS = (
    ("cu130", "13.0", CUDA13_FLOOR, (7, 5)),
    ("cu129", "12.9", CUDA12_FLOOR, (7, 5)),
    ("cu126", "12.6", CUDA12_FLOOR, (5, 0)),
)
# cu126 carries no Blackwell (sm_100/sm_120) kernels: those GPUs need cu129 or newer.
CU126_NEWEST_CAPABILITY = (9, 0)
# onnxruntime-gpu on the package index is built for CUDA 13 (requires nvidia-cuda-runtime ~= 13.0,
# cuDNN 9 for CUDA 13): installed only beside a cu13x torch. It ships no CUDA libraries: the
# identity step calls onnxruntime.preload_dlls() after importing torch (engine/identity/providers.py),
# onnxruntime's documented way to use torch's. 1.31.1 is the newest onnxruntime-gpu on the index;
# the CPU onnxruntime the tests run is 1.32.0 (not run on a GPU here).
ONNXRUNTIME_GPU = "onnxruntime-gpu==1.31.1"
NVIDIA_SMI_QUERY = ("--query-gpu=driver_version,name,compute_cap,memory.total", "--format=csv,noheader,nounits")


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str
    compute_capability: tuple[int, int] | None  # None: the driver's nvidia-smi does not report it
    memory_mib: int | None


@dataclass(frozen=True)
class WheelChoice:
    variant: str  # "cu130", "cu129", "cu126" or "cpu"
    index_url: str
    onnxruntime_gpu: bool
    reason: str  # one sentence for the status line and the log


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=driver_version,name,compute_cap,memory.total
    --format=csv,noheader,nounits`` (the last two columns may be absent on old drivers)."""
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 2 or not re.fullmatch(r"\d+(\.\d+)+", cells[0]):
            continue
        capability = None
        if len(cells) > 2 and re.fullmatch(r"\d+\.\d+", cells[2]):
            major, minor = cells[2].split(".")
            capability = (int(major), int(minor))
        memory = int(cells[3]) if len(cells) > 3 and cells[3].isdigit() else None
        gpus.append(Gpu(name=cells[1], driver=cells[0], compute_capability=capability, memory_mib=memory))
    return gpus


def query_gpus(run=subprocess.run, which=shutil.which) -> list[Gpu]:
    """The NVIDIA GPUs ``nvidia-smi`` reports ([] when it is absent or fails: never an error)."""
    exe = which("nvidia-smi")
    if exe is None:
        return []
    for query in (NVIDIA_SMI_QUERY[0], "--query-gpu=driver_version,name"):  # old drivers lack compute_cap
        try:
            done = run([exe, query, NVIDIA_SMI_QUERY[1]], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return []
        if done.returncode == 0:
            return parse_nvidia_smi(done.stdout)
    return []


def choose_wheel(gpus: list[Gpu], platform: str = sys.platform) -> WheelChoice:
    """The newest CUDA build of the pinned torch this machine's driver and GPUs can run, else CPU."""
    cpu = TORCH_INDEX.format("cpu")
    if platform == "darwin":
        return WheelChoice("cpu", cpu, False, "macOS has no CUDA: the CPU build of torch is installed")
    if not gpus:
        return WheelChoice("cpu", cpu, False, "no NVIDIA driver found (nvidia-smi is not on the PATH or reports no "
                                              "GPU): the CPU build of torch is installed; install the NVIDIA driver "
                                              "and run Install Engine again for the GPU")
    gpu = gpus[0]
    driver = version_tuple(gpu.driver)
    windows = platform == "win32"
    capability = gpu.compute_capability
    for tag, cuda, minimums, lowest in TORCH_CUDA_BUILDS:
        needed = minimums[1 if windows else 0]
        if driver < needed:
            continue
        if capability is None and tag != "cu126":
            continue  # unknown GPU (an nvidia-smi too old to say): the build with kernels for the most GPUs
        if capability is not None and capability < lowest:
            continue
        if tag == "cu126" and capability is not None and capability > CU126_NEWEST_CAPABILITY:
            continue
        why = (f"{gpu.name}, driver {gpu.driver}: torch {PINNED_TORCH} built for CUDA {cuda} ({tag}; needs driver "
               f">= {'.'.join(map(str, needed))})")
        if capability is None:
            why += "; the GPU's compute capability is unknown (old nvidia-smi): if torch reports 'no kernel image', " \
                   "choose the CPU build or update the driver"
        return WheelChoice(tag, TORCH_INDEX.format(tag), tag.startswith("cu13"), why)
    if capability is not None and capability < (5, 0):
        why = f"{gpu.name} (compute capability {capability[0]}.{capability[1]}) is too old for torch {PINNED_TORCH}"
    else:
        why = (f"driver {gpu.driver} is older than every CUDA build of torch {PINNED_TORCH} accepts "
               "(CUDA 12 needs the 525 branch or newer)")
    return WheelChoice("cpu", cpu, False, why + ": the CPU build of torch is installed; update the NVIDIA driver "
                                                "and run Install Engine again for the GPU")
