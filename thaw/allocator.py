"""Keep the memory a training step frees for the next step, instead of handing it back to the kernel.

TensorFlow's CPU allocator is the C library's malloc. With glibc's defaults, every training step frees its
tensors, glibc shrinks the heap they came from, and the next step's tensors fault their pages back in: a
fine-tune of 10,000 32x32 rows took 5.6 million page faults, and 22 of its 46 s were system time
(`perf stat -e page-faults` on `python -m stages.finetune`). Padding each heap by 32 MiB when it grows, and
keeping that much free at its top, removes nearly all of them (figures at TOP_PAD below). The usual fix,
preloading tcmalloc or jemalloc with LD_PRELOAD, needs a library the machine may not have and an environment
variable set before Python starts; glibc's own `mallopt` needs neither, hence this module.

The results do not change: the allocator decides where tensors live, not what is computed in them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TOP_PAD = -2  # glibc's malloc.h: how much extra a heap grows by, and keeps free when it shrinks
# Measured on one fine-tune epoch (each process's page faults and peak resident memory, VmHWM), 0 / 32 / 64 MiB:
# 50,000 rows at 32x32: 26.6 / 0.72 / 0.38 million faults, 145 / 78 / 77 s, 934 / 1,002 / 1,158 MiB;
# 1,000 rows at 160x160 with MobileNetV2: 6.0 / 2.6-2.9 / 1.4-1.7 million, 1,242-1,282 / 1,295-1,341 /
# 1,376-1,471 MiB. 32 MiB keeps the speed and leaves the 160x160 fine-tune room under its 1.5 GB budget; 64 MiB,
# padded in each of the threads' heaps, went over it (benchmarks/large_data.py: 1,462 MiB at 1,000 rows).
TOP_PAD = 32 << 20


def keep_freed_memory(top_pad: int = TOP_PAD) -> bool:
    """Ask glibc's malloc to keep `top_pad` bytes free at the top of every heap (process-wide, idempotent).

    Returns whether it applied: False, and nothing changed, where the C library is not glibc (macOS, musl).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if libc.mallopt(M_TOP_PAD, ctypes.c_int(top_pad)) != 1:
        log.warning("glibc refused mallopt(M_TOP_PAD, %d); training runs with the default heap padding", top_pad)
        return False
    return True
