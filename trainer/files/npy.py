"""Editing a .npy file in place, without copying its (possibly gigabytes of) data."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def shrink_npy(path: Path, rows: int) -> None:
    """Cuts a C-order .npy file down to its first ``rows`` rows, in place.

    The header is rewritten with the new shape, padded to its old length so the data does not
    move, and the file is truncated: no copy of the (possibly gigabytes of) data is made.
    """
    fmt = np.lib.format
    with open(path, "r+b") as f:
        version = fmt.read_magic(f)
        read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        shape, fortran_order, dtype = read_header[version](f)
        offset = f.tell()
        if fortran_order or rows > shape[0]:
            raise ValueError(f"cannot shrink {path} of shape {shape} to {rows} rows")
        new_shape = (rows, *shape[1:])
        header = (
            f"{{'descr': {fmt.dtype_to_descr(dtype)!r}, 'fortran_order': False, "
            f"'shape': {new_shape!r}, }}"
        )
        length_format = "<H" if version == (1, 0) else "<I"
        prefix = fmt.magic(*version) + struct.pack(length_format, 0)
        header_len = offset - len(prefix)
        # A shorter shape always fits in the old header's space; pad with spaces as numpy does.
        padded = header.ljust(header_len - 1) + "\n"
        if len(padded) != header_len:
            raise ValueError(f"new header of {path} does not fit its old {header_len} bytes")
        f.seek(0)
        f.write(fmt.magic(*version) + struct.pack(length_format, header_len))
        f.write(padded.encode("latin1"))
        f.truncate(offset + rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
