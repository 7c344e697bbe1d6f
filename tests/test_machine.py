"""The machine kind that decides the last bits of trained weights: read from /proc and /sys, compared with ==."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from thaw.commands import machine

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512_bf16 amx_tile amx_bf16 popcnt aes

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu sse
"""


def fake_machine(tmp_path: Path, cpuinfo: str = CPUINFO, l2: str = "2048K") -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "cpuinfo"
    proc.write_text(cpuinfo)
    caches = tmp_path / "cache"
    for i, (level, ctype, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                              ("2", "Unified", l2)]):  # fmt: skip
        index = caches / f"index{i}"
        index.mkdir(parents=True)
        for name, value in (("level", level), ("type", ctype), ("size", size)):
            (index / name).write_text(value + "\n")
    return proc, caches


def test_the_kind_names_the_cpu_its_simd_extensions_and_caches(tmp_path):
    kind = machine.kind(*fake_machine(tmp_path))
    assert kind["cpu"] == {
        "vendor_id": "GenuineIntel", "cpu family": "6", "model": "143",
        "simd": ["amx_bf16", "amx_tile", "avx", "avx2", "avx512_bf16", "avx512f", "f16c", "fma",
                 "sse", "sse2", "sse4_1", "sse4_2", "ssse3"],
    }  # fmt: skip
    assert kind["caches"] == {"L1d": "48K", "L1i": "32K", "L2": "2048K"}
    assert kind["cores"] >= 1
    assert kind["libraries"]["numpy"]  # the installed version


def test_kinds_differ_by_instruction_set_or_cache_and_not_by_stepping_or_name(tmp_path):
    base = machine.kind(*fake_machine(tmp_path / "a"))
    renamed = CPUINFO.replace("stepping\t: 8", "stepping\t: 7").replace("8480+", "8488C")
    assert machine.kind(*fake_machine(tmp_path / "b", renamed)) == base
    no_amx = CPUINFO.replace(" amx_tile amx_bf16", "")
    assert machine.kind(*fake_machine(tmp_path / "c", no_amx)) != base
    assert machine.kind(*fake_machine(tmp_path / "d", l2="1024K")) != base


def test_without_proc_or_sys_the_kind_still_reads(tmp_path):
    kind = machine.kind(tmp_path / "no-cpuinfo", tmp_path / "no-cache")
    assert set(kind["cpu"]) == {"processor"} and kind["caches"] == {}


def test_the_command_prints_this_machines_kind_as_json_without_tensorflow():
    code = "import runpy, sys; runpy.run_module('thaw.commands.machine', run_name='__main__'); print('tensorflow' in sys.modules)"
    printed, tf_loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout.rstrip().rsplit("\n", 1)  # fmt: skip
    assert json.loads(printed) == machine.kind()
    assert tf_loaded == "False"


def test_a_kernel_switch_in_the_environment_makes_another_kind(tmp_path, monkeypatch):
    """TF_ENABLE_ONEDNN_OPTS=0 or an ISA cap trains to other bits on the same CPU (benchmarks/kernels.py)."""
    for name in machine.KERNEL_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    base = machine.kind(*fake_machine(tmp_path / "a"))
    assert base["switches"] == {}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = machine.kind(*fake_machine(tmp_path / "b"))
    assert capped != base and capped["switches"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
