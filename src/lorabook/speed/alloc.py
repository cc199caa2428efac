"""The C memory allocator of lorabook's CPU training processes.

A training step allocates and frees a few hundred activation tensors of a
few megabytes each. glibc's malloc serves sizes like these from its heap
once its mmap threshold has adapted to them, and the heap's free holes stay
resident, so the process peaks well above what is live at once. tcmalloc
(gperftools' `libtcmalloc_minimal`, the Debian package
libtcmalloc-minimal4) reuses such blocks by size class: the same speed and
a lower peak (`make bench` measures both, benchmarks/README.md).

An allocator is chosen when a process starts, through `LD_PRELOAD`:
`make book` and `make bench` set it, and the benchmark starts
each recipe's process with the allocator that recipe runs under. Set
`LORABOOK_ALLOCATOR=system` to keep the system's allocator everywhere.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64", "/usr/lib", "/usr/local/lib")


def tcmalloc_path() -> str | None:
    """The tcmalloc shared library to preload, or None (not Linux, not
    installed, or LORABOOK_ALLOCATOR=system)."""
    if not sys.platform.startswith("linux") or \
            os.environ.get("LORABOOK_ALLOCATOR", "tcmalloc") == "system":
        return None
    for d in LIB_DIRS:
        for name in TCMALLOC_NAMES:
            if (Path(d) / name).is_file():
                return str(Path(d) / name)
    return None


def active() -> str:
    """The allocator this process runs under: "tcmalloc" or "system"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "tcmalloc" if "libtcmalloc" in maps else "system"


def child_env(env: dict, allocator: str) -> dict:
    """A copy of `env` whose LD_PRELOAD makes a new process run under
    `allocator` ("tcmalloc" or "system"); "tcmalloc" where it is not
    available leaves the system's allocator."""
    if allocator not in ("tcmalloc", "system"):
        raise ValueError(f"allocator must be 'tcmalloc' or 'system', got {allocator!r}")
    env = dict(env)
    kept = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split()
            if "libtcmalloc" not in p]
    lib = tcmalloc_path() if allocator == "tcmalloc" else None
    if lib:
        kept.insert(0, lib)
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


if __name__ == "__main__":       # `python -m lorabook.speed.alloc`: for the Makefile
    print(tcmalloc_path() or "")
