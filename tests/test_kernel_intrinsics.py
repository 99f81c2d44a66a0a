"""Every SIMD intrinsic in the extension is inlined into its kernel.

An intrinsic is a function marked ``#[target_feature]``: it inlines only into
code compiled with those features. A closure inside a kernel (``array::from_fn``,
``[..].map``) does not inherit the kernel's features, so when the optimizer
does not inline the closure first, its intrinsics stay calls, one per
instruction. That made q6_K prompts 30x slower in one build (5 tok/s on
TinyLlama shapes) while every result stayed right, so only the symbol table
shows it: an out-of-line intrinsic is a defined function named after
``core::core_arch``.
"""

import struct
import sys
from pathlib import Path

import pytest

import edgellm

SHT_SYMTAB = 2
STT_FUNC = 2


def function_names(path: Path) -> list[str]:
    """Names of the functions the ELF file defines (its .symtab)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "a 64-bit ELF file"
    order = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(order + "Q", data, 0x28)
    shentsize, shnum = struct.unpack_from(order + "HH", data, 0x3A)
    sections = []
    for i in range(shnum):
        _, sh_type, _, _, offset, size, link, _, _, entsize = struct.unpack_from(order + "IIQQQQIIQQ", data, shoff + i * shentsize)
        sections.append((sh_type, offset, size, link, entsize))
    names = []
    for sh_type, offset, size, link, entsize in sections:
        if sh_type != SHT_SYMTAB:
            continue
        strtab = sections[link][1]
        for at in range(offset, offset + size, entsize):
            name, info, _, shndx = struct.unpack_from(order + "IBBH", data, at)
            if info & 0xF == STT_FUNC and shndx != 0:
                end = data.index(b"\0", strtab + name)
                names.append(data[strtab + name : end].decode("ascii", "replace"))
    return names


def out_of_line_intrinsics(names: list[str]) -> list[str]:
    """The x86 (``_mm*``) and aarch64 (``neon``) intrinsics among `names`,
    mangled either way (``core9core_arch3x864avx2`` or ``core_arch::x86::avx2``)."""
    simd = ("_mm", "neon")
    return [n for n in names if "core_arch" in n and any(s in n for s in simd) and "fmt" not in n]


def test_the_check_finds_a_mangled_intrinsic():
    names = [
        "_RNvNtNtNtCsgEmfK2I1SDS_4core9core_arch3x864avx216__mm256_add_epi16",
        "_ZN4core9core_arch3x864avx218_mm256_maddubs_epi1617h0123456789abcdefE",
        "_RNvNtNtNtCsgEmfK2I1SDS_4core9core_arch3x865xsave7__xgetbv",
        "_RNvXs0_NtNtCsgEmfK2I1SDS_4core9core_arch3x86NtB5_7___m128iNtNtB9_3fmt5Debug3fmt",
        "_ZN15edgellm_kernels3x8613qgemm_avx2_q4_k17h0123456789abcdefE",
    ]
    assert out_of_line_intrinsics(names) == names[:2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the ELF symbol table")
def test_no_intrinsic_is_left_as_a_call():
    lib = Path(edgellm._core.__file__)
    names = function_names(lib)
    if not names:
        pytest.skip(f"{lib.name} has no symbol table (stripped)")
    assert any("edgellm_kernels" in n for n in names), "the kernels' symbols are in the table"
    assert out_of_line_intrinsics(names) == [], "intrinsics compiled as calls (a closure inside a kernel?)"
