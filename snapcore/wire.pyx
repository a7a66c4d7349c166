# cython: language_level=3
"""Protobuf encoding of containerd's snapshot Info: the bytes of List, Stat and Update answers.

A List of 10,000 snapshots is 10,000 Info messages; building them as
protobuf objects costs about 7 us each in Python, encoding them here well
under 1 us. The layouts are containerd's ``api/services/snapshots/v1/snapshots.proto``:

- ``Info``: name = 1, parent = 2 (strings), kind = 3 (enum), created_at = 4,
  updated_at = 5 (``google.protobuf.Timestamp``: seconds = 1, nanos = 2),
  labels = 6 (a map: entries of key = 1, value = 2);
- ``ListSnapshotsResponse``: repeated Info info = 1; ``StatSnapshotResponse``
  and ``UpdateSnapshotResponse``: Info info = 1. A message of N Infos is
  the concatenation of N ``info = 1`` fields, so one encoder makes all three.

As protobuf's own serializer: fields at their default ("" or 0) are left out,
except that the two Timestamps are always present (as messages that were
set); map entries carry both key and value. Infos are the 6-tuples of
``pysnap.types.Info``: (kind, name, parent, labels, created_ns, updated_ns).
"""

from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy


cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

cdef enum:
    _TAG_STRING_1 = 0x0A  # field 1, length-delimited
    _TAG_STRING_2 = 0x12  # field 2, length-delimited
    _TAG_KIND = 0x18  # field 3, varint
    _TAG_CREATED = 0x22  # field 4, length-delimited
    _TAG_UPDATED = 0x2A  # field 5, length-delimited
    _TAG_LABEL = 0x32  # field 6, length-delimited
    _TAG_VARINT_1 = 0x08
    _TAG_VARINT_2 = 0x10

cdef struct Buf:
    char *data
    Py_ssize_t len
    Py_ssize_t cap


cdef int _reserve(Buf *b, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap
    cdef char *p
    if b.len + n <= b.cap:
        return 0
    cap = b.cap * 2
    if cap < b.len + n:
        cap = b.len + n
    if cap < 4096:
        cap = 4096
    p = <char *>PyMem_Realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int _varint_size(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef int _varint(Buf *b, uint64_t v) except -1:
    _reserve(b, 10)
    while v >= 0x80:
        b.data[b.len] = <char>((v & 0x7F) | 0x80)
        b.len += 1
        v >>= 7
    b.data[b.len] = <char>v
    b.len += 1
    return 0


cdef int _raw(Buf *b, const char *s, Py_ssize_t n) except -1:
    if n == 0:
        return 0
    _reserve(b, n)
    memcpy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef int _tag(Buf *b, unsigned char tag) except -1:
    _reserve(b, 1)
    b.data[b.len] = <char>tag
    b.len += 1
    return 0


cdef int _string(Buf *b, unsigned char tag, str s, bint always) except -1:
    cdef Py_ssize_t n
    cdef const char *u = PyUnicode_AsUTF8AndSize(s, &n)  # raises for lone surrogates
    if n == 0 and not always:
        return 0
    _tag(b, tag)
    _varint(b, <uint64_t>n)
    _raw(b, u, n)
    return 0


cdef int _timestamp(Buf *b, unsigned char tag, int64_t ns) except -1:
    # Cython keeps Python's floor division and modulo here (no cdivision), so
    # nanos is in 0..999999999 as Timestamp requires, before 1970 too; secs *
    # 10**9 would overflow int64 below -2**63 + 10**9.
    cdef int64_t secs = ns // 1000000000
    cdef int64_t nanos = ns % 1000000000
    cdef int size = 0
    if secs:
        size += 1 + _varint_size(<uint64_t>secs)  # int64: two's complement when negative
    if nanos:
        size += 1 + _varint_size(<uint64_t>nanos)
    _tag(b, tag)
    _varint(b, <uint64_t>size)
    if secs:
        _tag(b, _TAG_VARINT_1)
        _varint(b, <uint64_t>secs)
    if nanos:
        _tag(b, _TAG_VARINT_2)
        _varint(b, <uint64_t>nanos)
    return 0


cdef int _info(Buf *b, object info) except -1:
    cdef Py_ssize_t klen, vlen
    cdef str k, v
    if len(info) != 6:
        raise ValueError(f"an Info is a 6-tuple, not {len(info)} items")
    cdef int64_t kind = info[0]
    _string(b, _TAG_STRING_1, info[1], False)
    _string(b, _TAG_STRING_2, info[2], False)
    if kind:
        _tag(b, _TAG_KIND)
        _varint(b, <uint64_t>kind)
    _timestamp(b, _TAG_CREATED, info[4])
    _timestamp(b, _TAG_UPDATED, info[5])
    for k, v in (<dict?>info[3]).items():
        PyUnicode_AsUTF8AndSize(k, &klen)
        PyUnicode_AsUTF8AndSize(v, &vlen)
        _tag(b, _TAG_LABEL)
        _varint(
            b, <uint64_t>(2 + _varint_size(<uint64_t>klen) + klen + _varint_size(<uint64_t>vlen) + vlen)
        )
        _string(b, _TAG_STRING_1, k, True)
        _string(b, _TAG_STRING_2, v, True)
    return 0


def encode_info_messages(infos, Py_ssize_t per_message, Py_ssize_t max_bytes=PY_SSIZE_T_MAX):
    """Messages of ``per_message`` Infos each (the last one shorter); none for no Infos.

    A message is cut sooner where the next Info would take it past
    ``max_bytes`` (an Info bigger than that goes alone). Each message is
    ``info = 1`` repeated: a ListSnapshotsResponse, or with one Info a
    StatSnapshotResponse or UpdateSnapshotResponse.

    Raises:
        ValueError: ``per_message`` < 1, or an Info that is not a 6-tuple.
        TypeError: a field of the wrong type (labels not a dict of str...).
        UnicodeEncodeError: a string that is not valid UTF-8 (a lone surrogate).
    """
    if per_message < 1:
        raise ValueError(f"per_message must be at least 1, not {per_message}")
    cdef Buf out, one
    cdef Py_ssize_t count = 0
    out.data = NULL
    out.len = out.cap = 0
    one.data = NULL
    one.len = one.cap = 0
    messages = []
    try:
        for info in infos:
            one.len = 0
            _info(&one, info)
            if count and out.len + 11 + one.len > max_bytes:  # 11: the tag and the length
                messages.append(out.data[:out.len])
                out.len = 0
                count = 0
            _tag(&out, _TAG_STRING_1)
            _varint(&out, <uint64_t>one.len)
            _raw(&out, one.data, one.len)
            count += 1
            if count == per_message:
                messages.append(out.data[:out.len])
                out.len = 0
                count = 0
        if count:
            messages.append(out.data[:out.len])
    finally:
        PyMem_Free(out.data)
        PyMem_Free(one.data)
    return messages
