#!/usr/bin/env python3
"""btf-from-image.py IMAGE OUT: copies the kernel's BTF (the .BTF section, what the running kernel
serves as /sys/kernel/btf/vmlinux) out of a kernel image file into OUT, for `bpftool btf dump`.

An arm64 `vmlinuz` is a flat Image (Debian: uncompressed since 6.x, gzip before), not an ELF
file, so it has no section table to find .BTF by: this looks for BTF headers (magic 0xeB9F,
version 1, flags 0, 24-byte header) and keeps the largest blob whose header is consistent
(type section first, string section right after it, both strings sections bounded by NULs).
Used by scripts/gen-vmlinux for the architectures this machine does not run."""
import gzip
import struct
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: btf-from-image.py IMAGE OUT")
    data = open(sys.argv[1], "rb").read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    magic = b"\x9f\xeb\x01\x00\x18\x00\x00\x00"  # 0xeB9F LE, version 1, flags 0, hdr_len 24
    best = None
    i = data.find(magic)
    while i >= 0:
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, i + 8)
        end = i + 24 + str_off + str_len
        if (type_off == 0 and str_off == type_len and str_len > 0 and end <= len(data)
                and data[i + 24 + str_off] == 0 and data[end - 1] == 0):
            if best is None or end - i > best[1] - best[0]:
                best = (i, end)
        i = data.find(magic, i + 1)
    if best is None:
        sys.exit(f"btf-from-image.py: no BTF in {sys.argv[1]} (a kernel built without CONFIG_DEBUG_INFO_BTF?)")
    with open(sys.argv[2], "wb") as f:
        f.write(data[best[0]:best[1]])
    print(f"BTF: {best[1] - best[0]} bytes at offset {best[0]:#x}")


main()
