# cython: language_level=3
"""Key and record encoding for pysnap's LMDB metadata store.

Every integer is fixed-width big-endian (pgproto's hton.h), so LMDB's bytewise
key order is numeric order. Each kind of record lives in its own named
database, so no key carries a type prefix (a 511-byte snapshot name fits).

Layouts (as containerd's bolt.go documents its buckets):

``snapshots`` database, key = the snapshot name (UTF-8), value = record::

    off  size  field
    0    1     format version (RECORD_VERSION = 1)
    1    1     kind: 1 view, 2 active, 3 committed (containerd's numbers)
    2    8     id
    10   8     created, nanoseconds since the epoch (below 2**63: an int64
    18   8     updated, nanoseconds since the epoch  Timestamp on the wire)
    26   8     size in bytes (0 unless committed)
    34   8     inodes (0 unless committed)
    42   4     P = length of the parent name, then P bytes UTF-8 ("" = no parent)
    ..   4     N = number of labels, then N times:
                 4 + key length, key UTF-8, 4 + value length, value UTF-8
    the record ends exactly after the last label.

``parents`` database, key = ``parent_key(parent_id, child_id)`` = be64(parent)
+ be64(child), value empty: a parent's children are one key range, found with
one prefix seek on ``id_key(parent_id)``.

``ids`` database, key = ``id_key(id)`` = be64(id), value = the name (UTF-8).

Decoding checks every length and byte: truncated, oversized or corrupt input
raises ``RecordError`` (a ValueError), never reads out of bounds or returns
garbage. ``pysnap._reference`` holds the struct-based twins (test oracle).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from .includes.linux cimport snap_pack_be32, snap_pack_be64, snap_unpack_be32, snap_unpack_be64


cdef extern from *:
    """
    /* A tuple subclass instance with n empty slots, as CPython's own
       tuple_subtype_new allocates one (tp_alloc, then PyTuple_SET_ITEM). */
    static inline PyObject *snap_tuple_alloc(PyObject *type, Py_ssize_t n) {
        PyTypeObject *t = (PyTypeObject *)type;
        return t->tp_alloc(t, n);
    }

    /* Whether p[0..n) is all ASCII: the high bits of 8 bytes at a time
       (a containerd name, "default/12/sha256:" + 64 hex digits, is ~80). */
    static inline int snap_is_ascii(const char *p, Py_ssize_t n) {
        uint64_t acc = 0, w;
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&w, p + i, 8);
            acc |= w;
        }
        for (; i < n; i++)
            acc |= (unsigned char)p[i];
        return (acc & 0x8080808080808080ULL) == 0;
    }
    """
    object snap_tuple_alloc(object type, Py_ssize_t n)
    bint snap_is_ascii(const char *p, Py_ssize_t n) nogil
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    object PyUnicode_New(Py_ssize_t size, unsigned int maxchar)
    void *PyUnicode_DATA(object s)


cdef enum:
    _VERSION = 1
    _HEAD = 42              # fixed part of a record, before the parent length
cdef Py_ssize_t _MAX_LEN = 0xFFFFFFFF
cdef uint64_t _MAX_TIME = 0x7FFFFFFFFFFFFFFF

RECORD_VERSION = _VERSION


class RecordError(ValueError):
    """A stored record or key is truncated, oversized or corrupt."""


# Set once by register_types(): pysnap's Info and Usage classes and the Kind
# members indexed by their number. snapcore never imports pysnap.
cdef object _Info = None
cdef object _Usage = None
cdef tuple _kinds = None


def register_types(info_type, usage_type, kind_type):
    """Make decode_info(), decode_stat() and mdb's walk build ``info_type``, ``usage_type``.

    Both must be tuple subclasses without ``__init__`` (pysnap.types.Info and
    Usage); ``kind_type(n)`` gives the kind objects for n in 1..3.
    """
    global _Info, _Usage, _kinds
    if not (issubclass(info_type, tuple) and issubclass(usage_type, tuple)):
        raise TypeError("Info and Usage types must be tuple subclasses")
    _kinds = (None, kind_type(1), kind_type(2), kind_type(3))
    _Info = info_type
    _Usage = usage_type


# ---- keys -------------------------------------------------------------------

def id_key(uint64_t id):
    """be64(id): the key of the ``ids`` database and a parent's index prefix."""
    cdef char buf[8]
    snap_pack_be64(buf, id)
    return PyBytes_FromStringAndSize(buf, 8)


def parent_key(uint64_t parent, uint64_t child):
    """be64(parent) + be64(child): a parent's children form one LMDB range."""
    cdef char buf[16]
    snap_pack_be64(buf, parent)
    snap_pack_be64(buf + 8, child)
    return PyBytes_FromStringAndSize(buf, 16)


def decode_id(bytes data not None):
    """The id of an ``id_key()``. RecordError unless exactly 8 bytes."""
    if PyBytes_GET_SIZE(data) != 8:
        raise RecordError(f"corrupt id key: {PyBytes_GET_SIZE(data)} bytes, expected 8")
    return snap_unpack_be64(PyBytes_AS_STRING(data))


def decode_parent_key(bytes data not None):
    """``(parent_id, child_id)`` of a ``parent_key()``. RecordError unless 16 bytes."""
    if PyBytes_GET_SIZE(data) != 16:
        raise RecordError(f"corrupt parent key: {PyBytes_GET_SIZE(data)} bytes, expected 16")
    cdef const char *p = PyBytes_AS_STRING(data)
    return (snap_unpack_be64(p), snap_unpack_be64(p + 8))


# ---- records: encoding ------------------------------------------------------

cdef inline Py_ssize_t _str_len(object s, const char *what) except -1:
    cdef Py_ssize_t n
    if type(s) is not str:
        raise TypeError(f"{what.decode()} must be str, not {type(s).__name__}")
    PyUnicode_AsUTF8AndSize(s, &n)   # raises UnicodeEncodeError on surrogates
    if n > _MAX_LEN:
        raise ValueError(f"{what.decode()} too long: {n} bytes")
    return n


cdef inline char *_put_str(char *p, object s) noexcept:
    # _str_len() has already validated s and cached its UTF-8 form.
    cdef Py_ssize_t n
    cdef const char *u = PyUnicode_AsUTF8AndSize(s, &n)
    snap_pack_be32(p, <uint32_t>n)
    memcpy(p + 4, u, n)
    return p + 4 + n


def encode_record(uint64_t id, int kind, str parent not None, dict labels not None,
                  uint64_t created_ns, uint64_t updated_ns,
                  uint64_t size=0, uint64_t inodes=0):
    """The record of one snapshot (layout in the module docstring).

    ``kind`` is 1..3; ``labels`` a dict of str to str. Raises ValueError,
    TypeError, OverflowError or UnicodeEncodeError on values it cannot store.
    """
    if kind < 1 or kind > 3:
        raise ValueError(f"invalid snapshot kind {kind}")
    if created_ns > _MAX_TIME or updated_ns > _MAX_TIME:
        raise OverflowError("a time past 2**63 - 1 nanoseconds (year 2262)")
    cdef Py_ssize_t total = _HEAD + 4 + _str_len(parent, b"parent") + 4
    cdef Py_ssize_t count = PyDict_Size(labels)
    cdef Py_ssize_t pos = 0, seen = 0
    cdef PyObject *k
    cdef PyObject *v
    if count > _MAX_LEN:
        raise ValueError("too many labels")
    while PyDict_Next(labels, &pos, &k, &v):
        total += 8 + _str_len(<object>k, b"label key") + _str_len(<object>v, b"label value")
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef char *buf = PyBytes_AS_STRING(out)
    cdef char *p = buf
    p[0] = <char>_VERSION
    p[1] = <char>kind
    snap_pack_be64(p + 2, id)
    snap_pack_be64(p + 10, created_ns)
    snap_pack_be64(p + 18, updated_ns)
    snap_pack_be64(p + 26, size)
    snap_pack_be64(p + 34, inodes)
    p = _put_str(p + _HEAD, parent)
    snap_pack_be32(p, <uint32_t>count)
    p += 4
    pos = 0
    while PyDict_Next(labels, &pos, &k, &v):
        seen += 1
        p = _put_str(p, <object>k)
        p = _put_str(p, <object>v)
    if seen != count or p - buf != total:   # cannot happen: nothing ran in between
        raise RuntimeError("labels changed while encoding")
    return out


# ---- records: decoding ------------------------------------------------------

cdef struct _Head:
    uint64_t id
    int kind
    uint64_t created_ns
    uint64_t updated_ns
    uint64_t size
    uint64_t inodes
    const char *parent
    Py_ssize_t parent_len
    const char *labels      # the first label, after the label count
    uint32_t nlabels


cdef int _bad(str why) except -1:
    raise RecordError(f"corrupt snapshot record: {why}")


cdef inline int _read_head(const char *p, Py_ssize_t n, _Head *h) except -1:
    # Bounds: every length is checked against what is left before it is used.
    cdef Py_ssize_t left
    cdef uint32_t plen
    if n < _HEAD + 8:
        return _bad(f"truncated ({n} bytes)")
    if <unsigned char>p[0] != _VERSION:
        return _bad(f"unknown format version {<unsigned char>p[0]}")
    h.kind = <unsigned char>p[1]
    if h.kind < 1 or h.kind > 3:
        return _bad(f"invalid kind {h.kind}")
    h.id = snap_unpack_be64(p + 2)
    h.created_ns = snap_unpack_be64(p + 10)
    h.updated_ns = snap_unpack_be64(p + 18)
    if h.created_ns > _MAX_TIME or h.updated_ns > _MAX_TIME:
        return _bad("a time past 2**63 - 1 nanoseconds")
    h.size = snap_unpack_be64(p + 26)
    h.inodes = snap_unpack_be64(p + 34)
    plen = snap_unpack_be32(p + _HEAD)
    left = n - (_HEAD + 8)
    if plen > left:
        return _bad("parent name runs past the end")
    h.parent = p + _HEAD + 4
    h.parent_len = plen
    h.nlabels = snap_unpack_be32(p + _HEAD + 4 + plen)
    h.labels = p + _HEAD + 8 + plen
    return 0


cdef object _utf8(const char *p, Py_ssize_t n, str what):
    # Names are nearly always ASCII: copying into a new compact ASCII str
    # skips the UTF-8 decoder's setup (with the shared int in _make_info,
    # a walk of 1,000 records measured ~18% faster).
    if snap_is_ascii(p, n):
        s = PyUnicode_New(n, 127)
        memcpy(PyUnicode_DATA(s), p, n)
        return s
    try:
        return PyUnicode_DecodeUTF8(p, n, NULL)
    except UnicodeDecodeError:
        raise RecordError(f"corrupt snapshot record: {what} is not valid UTF-8") from None


cdef dict _read_labels(const _Head *h, const char *end):
    cdef dict labels = {}
    cdef const char *p = h.labels
    cdef uint32_t i, kl, vl
    cdef object k, v
    for i in range(h.nlabels):
        if end - p < 4:
            _bad("truncated label")
        kl = snap_unpack_be32(p)
        p += 4
        if kl > <size_t>(end - p):
            _bad("label key runs past the end")
        k = _utf8(p, kl, "label key")
        p += kl
        if end - p < 4:
            _bad("truncated label")
        vl = snap_unpack_be32(p)
        p += 4
        if vl > <size_t>(end - p):
            _bad("label value runs past the end")
        v = _utf8(p, vl, "label value")
        p += vl
        PyDict_SetItem(labels, k, v)
    if p != end:
        _bad(f"{end - p} trailing bytes")
    if <uint32_t>PyDict_Size(labels) != h.nlabels:
        _bad("duplicate label key")
    return labels


def decode_record(bytes data not None):
    """``(id, kind, parent, labels, created_ns, updated_ns, size, inodes)``.

    ``kind`` is the int 1..3. Raises RecordError on any corrupt input.
    """
    cdef _Head h
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    _read_head(p, n, &h)
    parent = _utf8(h.parent, h.parent_len, "parent name")
    labels = _read_labels(&h, p + n)
    return (h.id, h.kind, parent, labels, h.created_ns, h.updated_ns, h.size, h.inodes)


def decode_link(bytes data not None):
    """``(id, parent)`` with the parent name as UTF-8 bytes: all a chain walk needs.

    Reads the fixed head only (the labels are not decoded), so following a
    1,000-deep parent chain costs one LMDB get per layer and little more.
    Raises RecordError on a corrupt head.
    """
    cdef _Head h
    _read_head(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &h)
    return (h.id, PyBytes_FromStringAndSize(h.parent, h.parent_len))


cdef inline object _new_tuple(object cls, Py_ssize_t n):
    if cls is None:
        raise RuntimeError("snapcore.keys.register_types() was not called")
    return snap_tuple_alloc(cls, n)


cdef inline void _set(object t, Py_ssize_t i, object v) noexcept:
    Py_INCREF(v)
    PyTuple_SET_ITEM(t, i, v)


cdef object _make_info(object name, const char *p, Py_ssize_t n, _Head *h):
    # Every item is built before the Info is allocated: no error can leave a
    # half-filled tuple behind.
    if _kinds is None:      # before _kinds[...] below, which would say only TypeError
        raise RuntimeError("snapcore.keys.register_types() was not called")
    _read_head(p, n, h)
    parent = _utf8(h.parent, h.parent_len, "parent name") if h.parent_len else ""
    labels = _read_labels(h, p + n)
    kind = _kinds[h.kind]
    created = h.created_ns
    # one int object for both when equal (a record never updated since it was made)
    updated = created if h.updated_ns == h.created_ns else h.updated_ns
    info = _new_tuple(_Info, 6)
    _set(info, 0, kind)
    _set(info, 1, name)
    _set(info, 2, parent)
    _set(info, 3, labels)
    _set(info, 4, created)
    _set(info, 5, updated)
    return info


def decode_stat(str name not None, bytes data not None):
    """The Info alone of the record ``data`` stored under ``name``.

    Stat's path: no id and no Usage to build (five objects fewer than
    decode_info). Raises RecordError on corrupt input.
    """
    cdef _Head h
    return _make_info(name, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &h)


def decode_info(str name not None, bytes data not None):
    """``(id, Info, Usage)`` of the record ``data`` stored under ``name``.

    The stat hot path: everything is decoded here, in C, straight into the
    registered Info and Usage types. Raises RecordError on corrupt input.
    """
    cdef _Head h
    info = _make_info(name, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &h)
    size = h.size
    inodes = h.inodes
    usage = _new_tuple(_Usage, 2)
    _set(usage, 0, size)
    _set(usage, 1, inodes)
    return (h.id, info, usage)


cdef object info_from(const char *name, size_t name_len, const char *record, size_t record_len):
    """The Info of ``record`` stored under ``name`` (UTF-8): snapcore.mdb's walk."""
    cdef _Head h
    return _make_info(_utf8(name, name_len, "snapshot name"), record, record_len, &h)
