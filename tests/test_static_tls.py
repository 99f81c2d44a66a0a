"""The extension's thread-local block stays small.

Its TLS is static (mimalloc's initial-exec variables mark the whole module
STATIC_TLS), so glibc carves it from the small surplus it keeps for libraries
loaded after start-up; a library that also needs static TLS and is loaded after
edgellm (libgomp, under llama-cpp-python) then fails with "cannot allocate
memory in static TLS block". At 1656 bytes it did; per-thread buffers are kept
behind pointers (``ops/reuse.rs``) to stay well below.
"""

import struct
import sys
from pathlib import Path

import pytest

import edgellm

PT_TLS = 7
BUDGET = 1024


def tls_memsz(path: Path) -> int:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "a 64-bit ELF file"
    order = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        (p_type,) = struct.unpack_from(order + "I", data, off)
        if p_type == PT_TLS:
            (memsz,) = struct.unpack_from(order + "Q", data, off + 0x28)
            return memsz
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF static TLS is a Linux matter")
def test_extension_thread_local_block_is_small():
    lib = Path(edgellm._core.__file__)
    size = tls_memsz(lib)
    assert 0 < size <= BUDGET, f"{lib.name}: {size} bytes of thread-local storage (budget {BUDGET})"
