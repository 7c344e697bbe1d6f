"""The kind of machine a result was computed on, as far as it decides the last bits of trained weights.

thaw's runs are byte-deterministic on one kind of machine: the same seed, params, data and code give the same
files. Across kinds they may differ in the last bits, because TensorFlow's CPU kernels are picked at run time:
oneDNN by instruction set (AVX2, AVX-512, VNNI, BF16, AMX), Eigen's matrix products blocked by cache size, work
split by the number of cores. The library versions that compute them count too. `kind()` names all of that, so
that a `dvc.lock` can say which machines must reproduce it to the bit (docs/reproducibility.md) and a
mismatch reads as "other machine" or "not reproducible", never as either.

`python -m thaw.commands.machine` prints this machine's kind as JSON. No library reports this (platform and os give
the architecture and core count, not the kernels' choices), hence this module; it reads /proc, /sys and the
environment only and imports no TensorFlow. `thaw lockcheck` (the end of `make repro`) compares it with the
kind recorded beside the committed lock.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

# CPU flags of the instruction-set extensions that change which floating-point kernels run (prefixes)
SIMD_FLAGS = ("sse", "ssse", "avx", "fma", "f16c", "amx")
# the libraries that compute the trained files or write their bytes (weights in HDF5, plots as PNG)
LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "h5py", "matplotlib")
# documented switches that change which kernels run, or how work is split, on the same CPU
KERNEL_SWITCHES = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS")


def kind(proc: Path = Path("/proc/cpuinfo"), sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict:
    """This machine's kind: CPU (vendor, family, model, SIMD flags), cache sizes, the cores this process may
    use, the kernel switches set in the environment, and the versions of the libraries that compute or write
    the outputs; JSON-ready and sorted, so two kinds compare with ==."""
    return {
        "architecture": platform.machine(),
        "cpu": _cpu(proc),
        "caches": _caches(sysfs),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "libraries": {name: version for name in LIBRARIES if (version := _version(name))},
        "switches": {name: os.environ[name] for name in KERNEL_SWITCHES if name in os.environ},
    }


def _cpu(proc: Path) -> dict:
    """The first processor's identity in /proc/cpuinfo (Linux); elsewhere what `platform` knows."""
    try:
        text = proc.read_text()
    except OSError:
        return {"processor": platform.processor()}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = sorted(f for f in fields.get("flags", fields.get("Features", "")).split() if f.startswith(SIMD_FLAGS))
    keys = ("vendor_id", "cpu family", "model", "CPU implementer", "CPU part")  # x86, then Arm
    return {**{key: fields[key] for key in keys if key in fields}, "simd": flags}


def _caches(sysfs: Path) -> dict:
    """Each cache level's size ("L1d": "48K", ...) from sysfs; empty where there is none to read."""
    caches = {}
    for index in sorted(sysfs.glob("index*")):
        try:
            level, ctype, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        caches[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(ctype, "")] = size
    return caches


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    print(json.dumps(kind(), indent=2, sort_keys=True))
