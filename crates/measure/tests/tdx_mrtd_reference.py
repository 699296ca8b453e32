#!/usr/bin/env python3
"""Reference MRTD of a TD firmware image, written for this project independently of the Rust
implementation (crates/measure/src/tdx.rs), straight from the layouts it names: OVMF's GUIDed
footer table, the TDVF metadata descriptor (TDVF design guide, "TDVF Metadata"), and the
records the TDX module hashes for TDH.MEM.PAGE.ADD and TDH.MR.EXTEND (TDX module ABI).
Pages are added and extended page by page (KVM_TDX_INIT_MEM_REGION with measurement, QEMU >= 9).

usage: tdx_mrtd_reference.py FIRMWARE  -> prints MRTD as hex
"""
import hashlib
import struct
import sys
import uuid

FOOTER = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
TDX_METADATA = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le


def guided_table(fw):
    """Yields (guid bytes, data) of every entry, walking backwards from the footer."""
    footer_at = len(fw) - 0x30
    assert fw[footer_at:footer_at + 16] == FOOTER, "no GUIDed table footer"
    (total,) = struct.unpack_from("<H", fw, footer_at - 2)
    start = footer_at + 16 - total
    end = footer_at - 2
    while end - 18 >= start:
        guid = fw[end - 16:end]
        (length,) = struct.unpack_from("<H", fw, end - 18)
        yield guid, fw[end - length:end - 18]
        end -= length


def mrtd(fw):
    data = dict(guided_table(fw))[TDX_METADATA]
    (from_end,) = struct.unpack_from("<I", data, 0)
    desc = len(fw) - from_end
    signature, _length, _version, count = struct.unpack_from("<4sIII", fw, desc)
    assert signature == b"TDVF", "no TDVF descriptor"
    h = hashlib.sha384()
    for i in range(count):
        offset, raw, gpa, size, _kind, attrs = struct.unpack_from("<IIQQII", fw, desc + 16 + 32 * i)
        if attrs & 2:  # PAGE_AUG: accepted later by the guest, not measured
            continue
        content = fw[offset:offset + raw]
        for page in range(size // 4096):
            page_gpa = gpa + page * 4096
            h.update(b"MEM.PAGE.ADD".ljust(16, b"\0") + struct.pack("<Q", page_gpa) + bytes(104))
            if attrs & 1:  # MR_EXTEND
                for chunk in range(16):
                    at = page * 4096 + chunk * 256
                    h.update(b"MR.EXTEND".ljust(16, b"\0") + struct.pack("<Q", page_gpa + chunk * 256) + bytes(104))
                    h.update(content[at:at + 256].ljust(256, b"\0"))
    return h.hexdigest()


if __name__ == "__main__":
    print(mrtd(open(sys.argv[1], "rb").read()))
