"""Which memory allocator this process runs on, and where tcmalloc is to preload it.

On CPU, PyTorch training and the Rust tokenizer allocate and free many buffers per step from several threads.
glibc's malloc returns large blocks to the kernel and faults them in again, and its arenas contend between
threads; tcmalloc keeps them. The CPU images preload it (``LD_PRELOAD``), as does ``make run`` where it is
installed. ``make bench`` measures what it gives (the "allocator" figure). An allocator can only be chosen
before the process starts, so this module only finds and reports one.
"""

from __future__ import annotations

import glob
from pathlib import Path

TCMALLOC = "libtcmalloc_minimal.so.4"
"""The soname the images preload (Debian/Ubuntu package libtcmalloc-minimal4, gperftools)."""
LIBRARY_FOLDERS = ("/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
"""Where distributions install it (Debian/Ubuntu, Fedora/RHEL, Arch, source builds); the Makefile's TCMALLOC
looks in the same folders, in the same order."""
INSTALL_HINT = "apt-get install libtcmalloc-minimal4 (Debian/Ubuntu) or gperftools (other distributions)"

_KNOWN = ("tcmalloc", "jemalloc", "mimalloc")
"""Allocators recognised by a library of that name in the process's memory map."""


def find_tcmalloc() -> str | None:
    """Path of tcmalloc-minimal in the usual library folders of this Linux system, or None."""
    for pattern in (f"{folder}/{TCMALLOC}" for folder in LIBRARY_FOLDERS):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def in_use(maps: str | Path = "/proc/self/maps") -> str:
    """The allocator mapped into this process: "tcmalloc", "jemalloc", "mimalloc", "glibc malloc", or
    "unknown" where the process's memory map cannot be read (not Linux)."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return "unknown"
    libraries = {line.rsplit("/", 1)[-1] for line in text.splitlines() if "/" in line}
    for name in _KNOWN:
        if any(name in lib for lib in libraries):
            return name
    return "glibc malloc" if any(lib.startswith("libc.so") or lib.startswith("libc-") for lib in libraries) \
        else "unknown"


def report() -> str:
    """One line for ``nlpjobs doctor`` and the bench's machine description: the allocator in use and, on glibc,
    how to preload tcmalloc."""
    current = in_use()
    if current != "glibc malloc":
        return current
    found = find_tcmalloc()
    if found:
        return f"glibc malloc (tcmalloc is installed: LD_PRELOAD={found} speeds up CPU training; make run preloads it unless given TCMALLOC=)"
    return f"glibc malloc (tcmalloc, which speeds up CPU training, is not installed: {INSTALL_HINT})"
