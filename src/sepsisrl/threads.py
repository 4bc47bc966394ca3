"""Thread counts of a unit of work: torch's intra-op pool and NumPy's BLAS together.

Float reductions depend on how many threads split them (measured: the linear FQE's estimates
move by ~1e-13 between 1 and 2 OpenBLAS threads), and a BLAS that starts one thread per core
in every worker process of a busy machine oversubscribes it (measured on 2 cores with 2
workers: the FQE's matrix products ran 5-30x slower). A study therefore runs every unit with
``threads_per_worker`` threads in both pools, in-process, in a local worker or on Ray, so its
bytes do not depend on the machine's core count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def limited_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads and ``n`` BLAS threads; restore both after."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


def machine() -> dict[str, object]:
    """What a run's numbers still depend on beyond its seeds and thread counts: the kernels
    torch and NumPy's BLAS picked for this CPU, and the library builds. Two machines of one
    kind give the same bytes; two kinds can differ in the last bits, which training compounds
    (docs/train.md), so a study records this beside its timings (``study/run.json``)."""
    import platform

    import numpy
    import torch
    from threadpoolctl import threadpool_info

    blas = sorted({f"{i['internal_api']} {i['version']} ({i.get('architecture')})"
                   for i in threadpool_info() if i["user_api"] == "blas"})  # fmt: skip
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu(),
        "blas": blas,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


# the instruction-set flags a CPU's matrix kernels are chosen by: two CPUs with the same torch
# capability (e.g. AVX512) can still differ here, and in speed and in the last bits
_KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                 "amx_tile", "amx_bf16", "amx_fp16")  # fmt: skip


def cpu(cpuinfo: str | None = None) -> dict[str, object]:
    """Which CPU this is: vendor, model name, family and model number, and its kernel flags
    (``_KERNEL_FLAGS`` it has), read from ``/proc/cpuinfo`` (or ``cpuinfo``, its text). torch's
    capability alone does not tell CPUs apart: a 2-core AMD EPYC and a 2-core Intel Xeon VM
    both report ``AVX512``, and trained the card study's IQL runs at about 110 and 190
    steps/s (docs/run.md). Off Linux, the model is ``platform.processor()``, the rest None."""
    import platform

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {"vendor": None, "model_name": platform.processor() or None,
                    "family": None, "model": None, "flags": None}  # fmt: skip
    first: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            first.setdefault(key.strip(), value.strip())
    flags = set(first.get("flags", "").split())
    return {
        "vendor": first.get("vendor_id"),
        "model_name": first.get("model name"),
        "family": first.get("cpu family"),
        "model": first.get("model"),
        "flags": [f for f in _KERNEL_FLAGS if f in flags],
    }


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile would use on a CPU (``$CXX``, else ``g++``, else
    ``clang++`` on PATH), or None: the check a study makes before any work when its runs
    compile (``train.compile``), instead of failing at the first training unit."""
    import os
    import shutil

    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None
