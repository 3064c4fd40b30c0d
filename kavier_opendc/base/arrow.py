"""pyarrow's names for the output writers, with an ``array`` that leaves pandas unloaded.

``pyarrow.array`` imports pandas the first time it is called (to recognise pandas
objects), a third of a second of a 10-request ``kavier simulate``. The writers
only ever pass numeric numpy arrays and lists of strings; :func:`array` builds
those from their buffers, the same arrays ``pyarrow.array`` returns (no
validity bitmap, NaN kept as a value), and hands anything else to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow
from pyarrow import DataType, Table, bool_, float64, int32, int64, nulls, string, table  # noqa: F401 - the writers' names

#: numpy dtypes (native byte order) whose buffer is the arrow array's data as it is
_NUMERIC = {
    np.dtype(np.int8): pyarrow.int8(),
    np.dtype(np.int16): pyarrow.int16(),
    np.dtype(np.int32): pyarrow.int32(),
    np.dtype(np.int64): pyarrow.int64(),
    np.dtype(np.float32): pyarrow.float32(),
    np.dtype(np.float64): pyarrow.float64(),
}


def array(values: Any, type: DataType | None = None) -> pyarrow.Array:  # noqa: A002 - pyarrow.array's keyword
    """``pyarrow.array(values, type=type)``, without pandas for a 1-D numeric numpy array or a list of str."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype in _NUMERIC:
        kind = _NUMERIC[values.dtype]
        if type is None or type == kind:
            data = np.ascontiguousarray(values)
            return pyarrow.Array.from_buffers(kind, len(data), [None, pyarrow.py_buffer(data)])
    if isinstance(values, list) and type == pyarrow.string():
        try:
            text = "".join(values)  # TypeError unless every value is a str
            blob = text.encode("utf-8")
        except (TypeError, UnicodeEncodeError):  # pyarrow's own conversion, or its own error
            return pyarrow.array(values, type=type)
        if len(blob) == len(text):  # ASCII: a byte per character
            sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        else:
            sizes = np.fromiter((len(v.encode("utf-8")) for v in values), dtype=np.int64, count=len(values))
        if len(blob) < 2**31:  # 32-bit offsets, as pyarrow.string()
            offsets = np.zeros(len(values) + 1, dtype=np.int32)
            np.cumsum(sizes, out=offsets[1:])
            buffers = [None, pyarrow.py_buffer(offsets), pyarrow.py_buffer(blob)]
            return pyarrow.Array.from_buffers(pyarrow.string(), len(values), buffers)
    return pyarrow.array(values, type=type)
