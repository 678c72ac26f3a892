"""Pin numpy's OpenBLAS to one thread at run time (the attacks' small matrix products and
eigen-decompositions are slower with several threads on a shared machine, where idle BLAS threads
spin). Environment variables only work before numpy loads; this asks the loaded library itself."""

from __future__ import annotations

import ctypes


def set_blas_threads(n: int) -> bool:
    """Set the thread count of every OpenBLAS loaded in this process; False when none answered."""
    import numpy  # noqa: F401  (loads numpy's OpenBLAS if it is not loaded yet)

    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.split()[-1].lower()})
    except OSError:
        return False
    done = False
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                done = True
                break
    return done
