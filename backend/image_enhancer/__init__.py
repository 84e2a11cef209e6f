"""Image Enhancer: AI super-resolution and restoration served over gRPC.

Kept import-light on purpose: the pure-Python client (used inside GIMP) imports this package
without torch or numpy being present.
"""

__version__ = "0.1.0"


def let_openmp_threads_sleep() -> None:
    """Make OpenMP's worker threads sleep between parallel regions unless the user chose otherwise;
    read when an OpenMP library loads, so called before PyTorch or ncnn is imported. Spinning threads
    keep the cores from whatever runs next on them: OpenVINO's inference right after PyTorch converted
    the picture took 4–5 ms longer of 60, and ncnn ran 5–10× slower on two busy cores."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_process_defaults() -> None:
    """The process-wide settings the engine is measured with, each unless the user chose otherwise;
    read when the libraries load, so called before NumPy, PyTorch or ncnn is imported."""
    import os

    let_openmp_threads_sleep()
    # NumPy asks the kernel for huge pages for every array of 4 MB or more; under the usual
    # "defrag=madvise" the first touch of such an array may wait while the kernel compacts memory. A
    # 1024² compact job's fresh arrays (the result in float and in 8 bits: 250 MB) made it take 0.98 s
    # at the median instead of 0.70 (its best 0.66 against 0.70; 2-core EPYC, jobs in turns).
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
