# cython: language_level=3
"""snapcore.fsops: the layer codec's per-entry loops (issue 12).

``Applier`` unpacks a tar stream, fed in large buffers, straight into an
overlay upper directory with containerd's overlay semantics
(``archive.Apply`` with ``OverlayConvertWhiteout``); ``write_tar`` walks an
upper directory and produces its layer (overlay's native diff). Both run in C
with the GIL released; Python owns only the stream plumbing (decompression
and hashing in another thread) and the policy. (One module of about 2,200
lines, for a reason: both loops share the byte buffers, the error record
and the tar format's field rules, which a split would turn into a .pxd of
internals.)

Apply, one entry at a time (the order containerd's ``createTarFile`` uses):

* The name is cleaned lexically as ``filepath.Clean("/" + name)``; an entry
  that resolves to the root is skipped. The parent directory is opened with
  ``openat2(root, parent, RESOLVE_IN_ROOT)``: ``..``, absolute names and
  symlinks of this layer resolve as if the upper were ``/``, and nothing can
  be reached outside it; with ``RESOLVE_NO_XDEV`` nor inside another mount
  (a volume bind-mounted into the upper: EXDEV, as for a merge with a
  directory that is a mount's root). Parent fds are kept in a small cache,
  flushed when an entry replaces a directory or a symlink (the only changes
  that move where a cached path resolves).
* A parent the tar does not contain is made with the mode, owner and times
  of the same directory in the nearest lower layer that has it (looked up
  with ``RESOLVE_NO_SYMLINKS``: a symlink that exists only in a lower layer is
  not followed, so ``lib/x`` under a lower ``lib -> usr/lib`` makes a real
  ``lib/``), or 0755 when none has it (containerd's ``WithParents``).
* The last component is never followed: an existing entry is removed and
  replaced unless both are directories, which merge. Removal is rmtree's
  ``remove_at`` (``rmtree.pxd``): iterative at any depth, and never into
  another mount; a mount at or below what the entry replaces (a volume
  bind-mounted into the upper) stays, and the entry fails with EBUSY.
* ``.wh.NAME`` becomes a character device 0/0 ``NAME``; ``.wh..wh..opq``
  sets ``trusted.overlay.opaque=y`` on its directory; whiteouts of the
  directory itself or its parent are refused. A directory made over a
  whiteout device is made opaque, so a re-created directory hides the
  children it had in the lower layers (what overlayfs does on rmdir+mkdir).
* Files: ``openat(O_CREAT|O_EXCL|O_NOFOLLOW)``, ``write`` straight from the
  fed buffer, then ``fchown``, ``fsetxattr``, ``fchmod`` (after chown, which
  clears set-id bits; xattrs after the data, whose write drops
  ``security.capability``), ``futimens``. Hard links take their target
  inside the root (clamped there) and keep the target's metadata, as GNU
  tar does. Directory times are set at the end, after their contents.
* ``trusted.*`` xattrs in an archive are not applied; they are reported in
  ``warnings``. ENOTSUP, and EPERM for ``user.*`` on what is neither a file
  nor a directory, are reported there too (containerd ignores them).

Tar formats read: ustar (prefix), GNU (long names and link names, ``L`` and
``K``), PAX (``path``, ``linkpath``, ``size``, ``uid``, ``gid``, ``mtime`` and
``atime`` with nanoseconds, ``SCHILY.xattr.*``), v7, resolved as Go's
archive/tar (so containerd) resolves them: a GNU long name or link name wins
over PAX ``path``/``linkpath``, an empty PAX value keeps the header's field,
and the atime set is the later of ``atime`` and ``mtime``. Global PAX headers
are ignored, as containerd does. GNU sparse files (the GNU format's ``S`` entries,
PAX 0.0, 0.1 and 1.0) are written with holes.
"""

import os

from cpython.buffer cimport PyBuffer_FillInfo
from libc cimport errno
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset, strcmp, strerror, strlen, strncmp, strrchr
from posix.time cimport timespec
from posix.types cimport dev_t, gid_t, mode_t, off_t, uid_t
from posix.unistd cimport ftruncate, pwrite

from .includes cimport fileops as c
from .includes cimport dirwalk, linux
from .rmtree cimport remove_at


class TarError(ValueError):
    """A stream that is not a valid tar, or an entry the codec refuses.

    ``entry`` is the name of the entry (``None`` when no header was read),
    ``offset`` the position of its header in the uncompressed stream.
    """

    def __init__(self, message, entry=None, offset=None):
        super().__init__(message)
        self.entry = entry
        self.offset = offset


cdef enum:
    BLOCK = 512
    MAX_EXT = 1 << 20         # PAX and GNU long-name data, as Go's archive/tar
    # fragments of one sparse file: as many as a 1 MiB PAX map can hold ("0\n0\n"
    # each); old GNU extension blocks have no size of their own to bound them
    MAX_FRAGMENTS = 1 << 18
    NCACHE = 64               # parent directory fds kept open (a power of two)
    MAX_HOPS = 40             # symlinks followed while making parents (as the kernel)
    GETDENTS_BUF = 32768

cdef enum:
    ST_HEADER = 0
    ST_EXT = 1                # collecting x/g/L/K data
    ST_DATA = 2               # file data into self.fd
    ST_SKIP = 3               # data nobody keeps, and padding
    ST_END = 4
    ST_SPARSE_EXT = 5         # old GNU sparse extension blocks (after the header)
    ST_SPARSE_MAP = 6         # the PAX 1.0 sparse map at the start of the data
    ST_FAILED = 7             # an error left the stream at an unknown place

cdef enum:
    E_NONE = 0
    E_OS = 1
    E_TAR = 2

cdef int DIR_FLAGS = c.O_RDONLY | c.O_DIRECTORY | c.O_CLOEXEC
cdef int FILE_FLAGS = c.O_RDONLY | c.O_NOFOLLOW | c.O_NONBLOCK | c.O_CLOEXEC
# NO_XDEV: a mount inside the upper (a volume bind-mounted there) is never
# written into; an entry below one fails with EXDEV
cdef uint64_t IN_ROOT = c.RESOLVE_IN_ROOT | c.RESOLVE_NO_MAGICLINKS | c.RESOLVE_NO_XDEV
cdef int NOFOLLOW = c.AT_SYMLINK_NOFOLLOW
cdef int64_t MAX_ID = 4294967294   # uid/gid (-1 means "unchanged" to chown)


cdef inline int open_noatime(int dfd, const char *name, int flags) noexcept nogil:
    """openat with O_NOATIME where allowed (only the owner or CAP_FOWNER may ask for it)."""
    cdef int fd = c.snap_openat(dfd, name, flags | c.O_NOATIME)
    if fd < 0 and errno.errno == errno.EPERM:
        fd = c.snap_openat(dfd, name, flags)
    return fd


# ---- growable byte buffers -------------------------------------------------

cdef struct Buf:
    char *p
    size_t len
    size_t cap


cdef int buf_reserve(Buf *b, size_t n) noexcept nogil:
    """Room for n more bytes plus a NUL; 0 or ENOMEM."""
    cdef size_t want = b.len + n + 1
    cdef size_t cap
    cdef char *p
    if want <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 256
    while cap < want:
        cap *= 2
    p = <char *>realloc(b.p, cap)
    if p == NULL:
        return errno.ENOMEM
    b.p = p
    b.cap = cap
    return 0


cdef int buf_set(Buf *b, const char *s, size_t n) noexcept nogil:
    b.len = 0
    return buf_add(b, s, n)


cdef int buf_add(Buf *b, const char *s, size_t n) noexcept nogil:
    if buf_reserve(b, n):
        return errno.ENOMEM
    memcpy(b.p + b.len, s, n)
    b.len += n
    b.p[b.len] = 0
    return 0


cdef void buf_free(Buf *b) noexcept nogil:
    free(b.p)
    b.p = NULL
    b.len = b.cap = 0


cdef ssize_t read_xattr(int fd, const char *name, Buf *out) noexcept nogil:
    """The xattr list (name NULL) or value of fd into out; its size, or -1 with errno."""
    cdef ssize_t n
    while True:
        n = c.flistxattr(fd, NULL, 0) if name == NULL else c.fgetxattr(fd, name, NULL, 0)
        if n <= 0:
            return n
        out.len = 0
        if buf_reserve(out, <size_t>n):
            errno.errno = errno.ENOMEM
            return -1
        n = c.flistxattr(fd, out.p, <size_t>n) if name == NULL else \
            c.fgetxattr(fd, name, out.p, <size_t>n)
        if n >= 0 or errno.errno != errno.ERANGE:   # ERANGE: it grew meanwhile
            return n


cdef int copy_xattrs(int src, int dst) noexcept nogil:
    """Give dst src's xattrs but ``trusted.*`` (containerd's copyUpXAttrs); -1 with errno."""
    cdef Buf names
    cdef Buf value
    cdef ssize_t n, v
    cdef size_t i = 0
    cdef const char *name
    cdef int err = 0
    names.p = value.p = NULL
    names.len = names.cap = value.len = value.cap = 0
    n = read_xattr(src, NULL, &names)
    if n < 0:
        err = 0 if errno.errno == errno.EOPNOTSUPP else errno.errno
    while err == 0 and n > 0 and i < <size_t>n:
        name = names.p + i
        i += strlen(name) + 1
        if strncmp(name, b"trusted.", 8) == 0:
            continue
        v = read_xattr(src, name, &value)
        if v < 0:
            if errno.errno != errno.ENODATA:   # removed meanwhile: as containerd, skip it
                err = errno.errno
            continue
        if c.fsetxattr(dst, name, value.p, <size_t>v, 0) < 0:
            err = errno.errno
    buf_free(&names)
    buf_free(&value)
    errno.errno = err
    return -1 if err else 0


# ---- tar header fields -----------------------------------------------------

cdef int parse_number(const char *f, size_t n, int64_t *out) noexcept nogil:
    """An octal field (spaces/NULs around it) or GNU base-256; -1 if malformed."""
    cdef uint64_t v = 0
    cdef size_t i = 0
    cdef unsigned char ch
    if n and (<unsigned char>f[0]) & 0x80:
        if (<unsigned char>f[0]) == 0xff:     # negative: only a time can be; clamp
            out[0] = -1
            return 0
        v = (<unsigned char>f[0]) & 0x7f
        for i in range(1, n):
            if v >> 55:
                return -1
            v = (v << 8) | (<unsigned char>f[i])
        out[0] = <int64_t>v
        return 0
    while i < n and (f[i] == c' ' or f[i] == 0):
        i += 1
    while i < n:
        ch = <unsigned char>f[i]
        if ch == c' ' or ch == 0:
            break
        if ch < c'0' or ch > c'7' or v >> 60:
            return -1
        v = v * 8 + (ch - c'0')
        i += 1
    while i < n:
        if f[i] != c' ' and f[i] != 0:
            return -1
        i += 1
    out[0] = <int64_t>v
    return 0


cdef int parse_decimal(const char *s, size_t n, int64_t *out) noexcept nogil:
    cdef uint64_t v = 0
    cdef size_t i
    if n == 0 or n > 18:
        return -1
    for i in range(n):
        if s[i] < c'0' or s[i] > c'9':
            return -1
        v = v * 10 + <uint64_t>(s[i] - c'0')
    out[0] = <int64_t>v
    return 0


cdef int parse_pax_time(const char *s, size_t n, timespec *ts) noexcept nogil:
    """PAX time "[-]sec[.frac]"; times before the epoch become 0 (containerd's boundTime)."""
    cdef size_t i = 0, j
    cdef int64_t sec = 0
    cdef long nsec = 0
    cdef int digits = 0
    cdef bint neg = n > 0 and s[0] == c'-'
    if neg:
        i = 1
    j = i
    while j < n and s[j] != c'.':
        j += 1
    if parse_decimal(s + i, j - i, &sec):
        return -1
    if j < n:
        j += 1
        while j < n:
            if s[j] < c'0' or s[j] > c'9':
                return -1
            if digits < 9:
                nsec = nsec * 10 + (s[j] - c'0')
                digits += 1
            j += 1
    while digits < 9:
        nsec *= 10
        digits += 1
    if neg:
        sec, nsec = 0, 0
    ts.tv_sec = sec
    ts.tv_nsec = nsec
    return 0


cdef bint is_zero_block(const char *b) noexcept nogil:
    cdef size_t i
    for i in range(<size_t>BLOCK):
        if b[i]:
            return False
    return True


cdef int checksum_ok(const char *b) noexcept nogil:
    cdef int64_t want
    cdef int64_t su = 0, ss = 0
    cdef int i
    if parse_number(b + 148, 8, &want):
        return 0
    for i in range(<size_t>BLOCK):
        if 148 <= i < 156:
            su += 32
            ss += 32
        else:
            su += <unsigned char>b[i]
            ss += <signed char>b[i]
    return want == su or want == ss


cdef size_t field_len(const char *f, size_t n) noexcept nogil:
    cdef const char *z = <const char *>memchr(f, 0, n)
    return <size_t>(z - f) if z != NULL else n


cdef int clean_path(const char *s, size_t n, Buf *out) noexcept nogil:
    """filepath.Clean("/" + s) without the leading "/": "" is the root. ENOMEM or EINVAL (NUL)."""
    cdef size_t i = 0, j
    cdef size_t k
    out.len = 0
    if buf_reserve(out, n):
        return errno.ENOMEM
    while i < n:
        while i < n and s[i] == c'/':
            i += 1
        j = i
        while j < n and s[j] != c'/':
            if s[j] == 0:
                return errno.EINVAL
            j += 1
        if j == i:
            break
        if j - i == 1 and s[i] == c'.':
            pass
        elif j - i == 2 and s[i] == c'.' and s[i + 1] == c'.':
            k = out.len
            while k > 0 and out.p[k - 1] != c'/':
                k -= 1
            out.len = k - 1 if k > 0 else 0
        else:
            if out.len:
                out.p[out.len] = c'/'
                out.len += 1
            memcpy(out.p + out.len, s + i, j - i)
            out.len += j - i
        i = j
    out.p[out.len] = 0
    return 0


# ---- the applier -----------------------------------------------------------

cdef struct Slot:
    char *path
    size_t len
    uint64_t hash
    int fd
    gid_t new_gid             # the group a new file gets here (the dir's if setgid)


cdef struct DirTime:
    char *name
    timespec times[2]
    bint set_times            # False: an implied parent no lower had (times stay)
    bint implied              # made for an entry below it, not from an entry of its own


cdef struct Xattr:
    const char *key      # NUL-terminated, inside the PAX buffer
    const char *value
    size_t size


cdef uint64_t fnv1a(const char *s, size_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL
    cdef size_t i
    for i in range(n):
        h = (h ^ <unsigned char>s[i]) * 1099511628211ULL
    return h


cdef class Applier:
    """Apply one tar stream into the directory ``root`` (an overlay upper).

    ``lowers`` are the lower layers' directories, nearest first: parents the
    tar lacks take their metadata from them. Feed the uncompressed stream in
    buffers with ``feed()`` (True once the end-of-archive blocks were read:
    the rest needs no feeding), then call ``finish()``; ``close()`` frees
    everything (also after an error). Errors: TarError (the stream or an
    entry is refused) and OSError (errno, filename = the entry's name).
    """

    cdef int root
    cdef bytes root_path
    cdef size_t root_len
    cdef const char *root_c
    cdef int *lowers
    cdef int nlowers
    cdef int state
    cdef char hdr[BLOCK]
    cdef size_t hdr_have
    cdef bint zero1
    cdef uint64_t offset          # of the stream consumed so far
    cdef uint64_t hdr_offset      # of the current entry's header
    cdef uint64_t remain          # data bytes of the current state
    cdef uint64_t pad
    cdef char ext_type
    cdef Buf ext
    cdef Buf pax
    cdef bint has_pax
    cdef Buf longname
    cdef bint has_longname
    cdef Buf longlink
    cdef bint has_longlink
    cdef bint has_atime          # a PAX atime record set times[0]
    # the current entry
    cdef Buf raw                 # name as in the archive (for messages)
    cdef Buf name                # cleaned
    cdef Buf parent
    cdef const char *base
    cdef Buf link
    cdef Buf scratch
    cdef char type
    cdef mode_t mode
    cdef uid_t uid
    cdef gid_t gid
    cdef int64_t size
    cdef timespec times[2]
    cdef uint32_t devmajor, devminor
    cdef Xattr *xattrs
    # GNU sparse files: fragments (offset, size) stored back to back
    cdef uint64_t *smap
    cdef size_t snum, scap, sidx
    cdef uint64_t sleft, spos, realsize, smap_read
    # the PAX 1.0 map text parsed so far: position, fragment count (-1: not yet
    # read), numbers read, the pending offset (one pass over the text, not one
    # per block: a 1 MiB map of empty fragments would be quadratic)
    cdef size_t stext_pos, stext_got
    cdef int64_t stext_count, stext_off
    cdef int sparse              # 0 no, 1 map known, 2 PAX 1.0 (map in the data)
    cdef Buf smaptext
    cdef Buf sname
    cdef int nxattrs, xattr_cap
    cdef int fd
    cdef int pfd
    cdef gid_t pgid           # the group a new file gets in pfd
    cdef gid_t root_gid
    cdef uid_t euid
    cdef gid_t egid
    # state kept across entries
    cdef Slot cache[NCACHE]
    cdef DirTime *dirs
    cdef size_t ndirs, dirs_cap
    cdef Buf warn                 # "entry\0xattr\0reason\0" ...
    cdef public uint64_t entries
    # the error, raised by the wrapper
    cdef int ekind, eerrno
    cdef Buf emsg
    cdef Buf eop

    def __cinit__(self, root, lowers=()):
        cdef int i
        self.root = -1
        self.fd = -1
        self.lowers = NULL
        for i in range(NCACHE):
            self.cache[i].fd = -1
            self.cache[i].path = NULL
        self.root_path = os.fsencode(os.path.realpath(root))
        self.root_len = len(self.root_path)
        self.root_c = self.root_path
        self.root = os.open(self.root_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.euid = os.geteuid()
        self.egid = os.getegid()
        self.root_gid = self._new_gid(self.root)
        lowers = [os.fsencode(p) for p in lowers]
        self.lowers = <int *>malloc(sizeof(int) * (len(lowers) + 1))
        if self.lowers == NULL:
            raise MemoryError()
        for p in lowers:
            self.lowers[self.nlowers] = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.nlowers += 1

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        cdef int i
        if self.fd >= 0:
            c.close(self.fd)
            self.fd = -1
        if self.root >= 0:
            c.close(self.root)
            self.root = -1
        if self.lowers != NULL:
            for i in range(self.nlowers):
                c.close(self.lowers[i])
            free(self.lowers)
            self.lowers = NULL
            self.nlowers = 0
        self._flush_cache(-1)
        for i in range(<int>self.ndirs):
            free(self.dirs[i].name)
        free(self.dirs)
        self.dirs = NULL
        self.ndirs = self.dirs_cap = 0
        free(self.xattrs)
        free(self.smap)
        self.smap = NULL
        buf_free(&self.smaptext)
        buf_free(&self.sname)
        self.xattrs = NULL
        self.xattr_cap = self.nxattrs = 0
        buf_free(&self.ext)
        buf_free(&self.pax)
        buf_free(&self.longname)
        buf_free(&self.longlink)
        buf_free(&self.raw)
        buf_free(&self.name)
        buf_free(&self.parent)
        buf_free(&self.link)
        buf_free(&self.scratch)
        buf_free(&self.warn)
        buf_free(&self.emsg)
        buf_free(&self.eop)

    def close(self):
        """Free every fd and buffer; the applier is unusable afterwards."""
        self._free()

    @property
    def warnings(self):
        """(entry, xattr, reason) of every xattr that was not applied."""
        out = []
        cdef size_t i = 0, j
        parts = []
        while i < self.warn.len:
            j = strlen(self.warn.p + i)
            parts.append(self.warn.p[i:i + j].decode("utf-8", "surrogateescape"))
            i += j + 1
        for k in range(0, len(parts) - 2, 3):
            out.append((parts[k], parts[k + 1], parts[k + 2]))
        return out

    @property
    def directories(self):
        """{path from the root: implied} of every directory this stream made or set, in
        order; implied: made only as a parent of other entries, with no entry of its own."""
        cdef size_t i
        out = {}
        for i in range(self.ndirs):
            out[self.dirs[i].name.decode("utf-8", "surrogateescape")] = bool(self.dirs[i].implied)
        return out

    # -- errors ---------------------------------------------------------------

    cdef int _os(self, int err, const char *op) noexcept nogil:
        self.ekind = E_OS
        self.eerrno = err
        buf_set(&self.eop, op, strlen(op))
        return -1

    cdef int _os_closing(self, int fd, const char *op) noexcept nogil:
        # errno of the failed call, read before close() can change it
        cdef int err = errno.errno
        c.close(fd)
        return self._os(err, op)

    cdef int _tar(self, const char *msg) noexcept nogil:
        self.ekind = E_TAR
        buf_set(&self.emsg, msg, strlen(msg))
        return -1

    cdef int _raise(self) except -1:
        entry = None
        if self.raw.p != NULL and self.raw.len:
            entry = self.raw.p[:self.raw.len].decode("utf-8", "surrogateescape")
        kind = self.ekind
        self.ekind = E_NONE
        if kind == E_TAR:
            msg = self.emsg.p[:self.emsg.len].decode("utf-8", "surrogateescape")
            raise TarError(
                f"entry {entry!r} at offset {self.hdr_offset}: {msg}" if entry else
                f"at offset {self.hdr_offset}: {msg}", entry, self.hdr_offset)
        e = OSError(self.eerrno, strerror(self.eerrno).decode(), entry)
        e.add_note(f"while {self.eop.p[:self.eop.len].decode()} (layer entry at offset "
                   f"{self.hdr_offset})")
        if self.eerrno == errno.EXDEV:  # RESOLVE_NO_XDEV, or a merge with a mount's root
            e.add_note("a mount lies on the entry's way: nothing is written into another mount")
        raise e

    cdef int _warn(self, const char *key, const char *reason) noexcept nogil:
        buf_add(&self.warn, self.raw.p, self.raw.len)
        buf_add(&self.warn, "\0", 1)
        buf_add(&self.warn, key, strlen(key))
        buf_add(&self.warn, "\0", 1)
        buf_add(&self.warn, reason, strlen(reason))
        buf_add(&self.warn, "\0", 1)
        return 0

    # -- the stream -----------------------------------------------------------

    def feed(self, const unsigned char[::1] data not None):
        """Consume one buffer of the uncompressed stream; True once the archive ended."""
        cdef const char *p = <const char *>&data[0] if data.shape[0] else NULL
        cdef size_t n = data.shape[0]
        cdef int rc
        self._check_usable()
        with nogil:
            rc = self._feed(p, n)
        if rc < 0:
            if self.fd >= 0:             # a file the error cut short
                c.close(self.fd)
                self.fd = -1
            self.state = ST_FAILED
            self._raise()
        return self.state == ST_END

    cdef int _check_usable(self) except -1:
        if self.root < 0:
            raise ValueError("applier is closed")
        if self.state == ST_FAILED:
            raise ValueError("applier failed: an error left the stream at an unknown place")
        return 0

    cdef int _feed(self, const char *p, size_t n) noexcept nogil:
        cdef size_t take
        cdef ssize_t w
        while n:
            if self.state == ST_END:
                self.offset += n
                return 0
            if self.state == ST_HEADER or self.state == ST_SPARSE_EXT:
                if self.hdr_have == 0 and n >= BLOCK:
                    if self.state == ST_HEADER:
                        self.hdr_offset = self.offset
                    self.offset += BLOCK
                    if self._block_in(p) < 0:
                        return -1
                    p += BLOCK
                    n -= BLOCK
                    continue
                if self.hdr_have == 0 and self.state == ST_HEADER:
                    self.hdr_offset = self.offset
                take = BLOCK - self.hdr_have
                if take > n:
                    take = n
                memcpy(self.hdr + self.hdr_have, p, take)
                self.hdr_have += take
                self.offset += take
                p += take
                n -= take
                if self.hdr_have == BLOCK:
                    self.hdr_have = 0
                    if self._block_in(self.hdr) < 0:
                        return -1
                continue
            take = <size_t>self.remain if self.remain < n else n
            if self.state == ST_EXT:
                if buf_add(&self.ext, p, take):
                    return self._os(errno.ENOMEM, "reading an extended header")
            elif self.state == ST_SPARSE_MAP:
                # a block at a time: the map ends inside a block, padding fills it
                if take > BLOCK - self.smap_read % BLOCK:
                    take = <size_t>(BLOCK - self.smap_read % BLOCK)
                if buf_add(&self.smaptext, p, take):
                    return self._os(errno.ENOMEM, "reading a sparse map")
                self.smap_read += take
                self.remain -= take
                self.offset += take
                p += take
                n -= take
                if (self.smap_read % BLOCK == 0 or self.remain == 0) and \
                        self._sparse_map_text() < 0:
                    return -1
                continue
            elif self.state == ST_DATA:
                if self.sparse:
                    while self.sleft == 0 and self.sidx + 1 < self.snum:
                        self.sidx += 1
                        self.spos = self.smap[2 * self.sidx]
                        self.sleft = self.smap[2 * self.sidx + 1]
                    if take > self.sleft:
                        take = <size_t>self.sleft
                    w = pwrite(self.fd, p, take, <off_t>self.spos)
                    if w > 0:
                        self.spos += <uint64_t>w
                        self.sleft -= <uint64_t>w
                else:
                    w = c.c_write(self.fd, p, take)
                if w < 0:
                    if errno.errno == errno.EINTR:
                        continue
                    return self._os(errno.errno, "writing a file")
                take = <size_t>w
            self.remain -= take
            self.offset += take
            p += take
            n -= take
            if self.remain == 0 and self._data_done() < 0:
                return -1
        return 0

    cdef int _data_done(self) noexcept nogil:
        """The current state's data is complete: move on to padding or the next header."""
        if self.state == ST_EXT:
            self.state = ST_SKIP
            self.remain = self.pad
            self.pad = 0
            if self.ext_type == c'x':
                self.pax, self.ext = self.ext, self.pax
                self.has_pax = True
            elif self.ext_type == c'L':
                self.longname, self.ext = self.ext, self.longname
                self.has_longname = True
            elif self.ext_type == c'K':
                self.longlink, self.ext = self.ext, self.longlink
                self.has_longlink = True
            self.ext.len = 0
        elif self.state == ST_DATA:
            if self._finish_file() < 0:
                return -1
            self.state = ST_SKIP
            self.remain = self.pad
            self.pad = 0
        elif self.state == ST_SKIP and self.pad:
            self.remain = self.pad
            self.pad = 0
        if self.state == ST_SKIP and self.remain == 0:
            self.state = ST_HEADER
        return 0

    cdef int _skip(self, uint64_t size) noexcept nogil:
        self.state = ST_SKIP
        self.remain = size
        self.pad = (BLOCK - size % BLOCK) % BLOCK
        if self.remain == 0:
            self.remain = self.pad
            self.pad = 0
            if self.remain == 0:
                self.state = ST_HEADER
        return 0

    cdef int _header(self, const char *b) noexcept nogil:
        cdef int64_t v
        cdef char t
        cdef size_t nl, pl
        cdef bint ustar, gnu
        if is_zero_block(b):
            if self.zero1:
                self.state = ST_END
                return 0
            self.zero1 = True
            return 0
        if self.zero1:
            return self._tar("a zero block followed by data: not a tar stream")
        self.raw.len = 0
        if not checksum_ok(b):
            return self._tar("invalid tar header (checksum mismatch): not a tar stream, or corrupt")
        t = b[156]
        ustar = memcmp(b + 257, b"ustar\x0000", 8) == 0
        gnu = memcmp(b + 257, b"ustar  \x00", 8) == 0
        if parse_number(b + 124, 12, &v) or v < 0:
            return self._tar("invalid size field")
        self.size = v
        if t == c'x' or t == c'g' or t == c'L' or t == c'K':
            if v > MAX_EXT:
                return self._tar("extended header larger than 1 MiB")
            if t == c'g':
                return self._skip(<uint64_t>v)
            self.ext_type = t
            self.ext.len = 0
            self.state = ST_EXT
            self.remain = <uint64_t>v
            self.pad = (BLOCK - v % BLOCK) % BLOCK
            if v == 0:
                self.state = ST_SKIP
                self.remain = self.pad
                self.pad = 0
                return self._data_done()
            return 0
        # the name: ustar prefix + name; a PAX path, then a GNU long name, take its
        # place (after the PAX records, below: Go's archive/tar, so containerd, reads so)
        if not self.has_longname:
            nl = field_len(b, 100)
            pl = 0
            if ustar:
                pl = field_len(b + 345, 131 if memcmp(b + 508, b"tar\0", 4) == 0 else 155)
            if pl:
                buf_set(&self.raw, b + 345, pl)
                buf_add(&self.raw, "/", 1)
                buf_add(&self.raw, b, nl)
            else:
                buf_set(&self.raw, b, nl)
        if not self.has_longlink:
            buf_set(&self.link, b + 157, field_len(b + 157, 100))
        if parse_number(b + 100, 8, &v):
            return self._tar("invalid mode field")
        self.mode = <mode_t>(v & 0o7777)
        if parse_number(b + 108, 8, &v) or v < 0 or v > MAX_ID:
            return self._tar("invalid uid field")
        self.uid = <uid_t>v
        if parse_number(b + 116, 8, &v) or v < 0 or v > MAX_ID:
            return self._tar("invalid gid field")
        self.gid = <gid_t>v
        if parse_number(b + 136, 12, &v):
            return self._tar("invalid mtime field")
        self.times[1].tv_sec = v if v > 0 else 0
        self.times[1].tv_nsec = 0
        self.devmajor = self.devminor = 0
        if ustar or gnu:
            if parse_number(b + 329, 8, &v):
                return self._tar("invalid devmajor field")
            self.devmajor = <uint32_t>v
            if parse_number(b + 337, 8, &v):
                return self._tar("invalid devminor field")
            self.devminor = <uint32_t>v
        self.nxattrs = 0
        self.sparse = 0
        self.snum = 0
        self.realsize = 0
        self.sname.len = 0
        self.has_atime = False
        if self.has_pax and self._apply_pax() < 0:
            return -1
        if self.has_longname:
            buf_set(&self.raw, self.longname.p, field_len(self.longname.p, self.longname.len))
        if self.has_longlink:
            buf_set(&self.link, self.longlink.p, field_len(self.longlink.p, self.longlink.len))
        if self.sname.len:
            buf_set(&self.raw, self.sname.p, self.sname.len)
        # atime: the later of PAX atime and mtime, as containerd (latestTime)
        if not self.has_atime or self.times[0].tv_sec < self.times[1].tv_sec or (
                self.times[0].tv_sec == self.times[1].tv_sec and
                self.times[0].tv_nsec < self.times[1].tv_nsec):
            self.times[0] = self.times[1]
        self.has_pax = self.has_longname = self.has_longlink = False
        if t == 0 or t == c'7':
            t = c'5' if self.raw.len and self.raw.p[self.raw.len - 1] == c'/' and t == 0 else c'0'
        self.type = t
        self.entries += 1
        if t == c'S':
            return self._old_gnu_sparse(b)
        return self._entry()

    cdef int _block_in(self, const char *b) noexcept nogil:
        if self.state == ST_SPARSE_EXT:
            return self._old_gnu_sparse_ext(b)
        return self._header(b)

    cdef int _add_fragment(self, uint64_t off, uint64_t size) noexcept nogil:
        cdef uint64_t *m
        if self.snum == MAX_FRAGMENTS:
            return self._tar("sparse map of more than 262144 fragments")
        if self.snum == self.scap:
            self.scap = self.scap * 2 if self.scap else 16
            m = <uint64_t *>realloc(self.smap, sizeof(uint64_t) * 2 * self.scap)
            if m == NULL:
                return self._os(errno.ENOMEM, "reading a sparse map")
            self.smap = m
        if self.snum and off < self.smap[2 * self.snum - 2] + self.smap[2 * self.snum - 1]:
            return self._tar("invalid sparse map (fragments overlap or are out of order)")
        self.smap[2 * self.snum] = off
        self.smap[2 * self.snum + 1] = size
        self.snum += 1
        return 0

    cdef int _old_gnu_fragments(self, const char *b, int count) noexcept nogil:
        """Entries of 12-byte offset and size fields; the first with a NUL offset ends them."""
        cdef int i
        cdef int64_t off, size
        for i in range(count):
            if b[i * 24] == 0:
                break
            if parse_number(b + i * 24, 12, &off) or parse_number(b + i * 24 + 12, 12, &size) \
                    or off < 0 or size < 0:
                return self._tar("invalid sparse map")
            if self._add_fragment(<uint64_t>off, <uint64_t>size) < 0:
                return -1
        return 0

    cdef int _old_gnu_sparse(self, const char *b) noexcept nogil:
        """The GNU format's sparse header: 4 fragments, then extension blocks of 21."""
        cdef int64_t v
        self.sparse = 1
        if parse_number(b + 483, 12, &v) or v < 0:
            return self._tar("invalid sparse real size")
        self.realsize = <uint64_t>v
        if self._old_gnu_fragments(b + 386, 4) < 0:
            return -1
        if b[482]:
            self.state = ST_SPARSE_EXT
            return 0
        self.type = c'0'
        return self._entry()

    cdef int _old_gnu_sparse_ext(self, const char *b) noexcept nogil:
        if self._old_gnu_fragments(b, 21) < 0:
            return -1
        if b[504]:
            return 0
        self.state = ST_HEADER
        self.type = c'0'
        return self._entry()

    cdef int _sparse_map_text(self) noexcept nogil:
        """Parse the PAX 1.0 map ("count\\n" then "offset\\nsize\\n" per fragment) as it comes."""
        cdef size_t j
        cdef int64_t v
        cdef char *t = self.smaptext.p
        cdef size_t n = self.smaptext.len
        while True:
            j = self.stext_pos
            while j < n and t[j] != c'\n':
                j += 1
            if j >= n:
                if self.remain == 0:
                    return self._tar("truncated sparse map")
                if n > MAX_EXT:
                    return self._tar("sparse map larger than 1 MiB")
                return 0                 # more blocks to read
            if parse_decimal(t + self.stext_pos, j - self.stext_pos, &v):
                return self._tar("invalid sparse map")
            self.stext_pos = j + 1
            if self.stext_count < 0:
                self.stext_count = v
                if v == 0:
                    break
                continue
            self.stext_got += 1
            if self.stext_got % 2:
                self.stext_off = v
                continue
            if self._add_fragment(<uint64_t>self.stext_off, <uint64_t>v) < 0:
                return -1
            if <int64_t>self.snum == self.stext_count:
                break
        # the rest of this block is padding; data follows
        if self.smap_read % BLOCK:
            return self._tar("invalid sparse map (not padded to a block)")
        return self._sparse_start(self.remain)

    cdef int _sparse_start(self, uint64_t data) noexcept nogil:
        """Check the map against the stored data and the real size; start on the fragments."""
        cdef size_t i
        cdef uint64_t total = 0
        for i in range(self.snum):
            total += self.smap[2 * i + 1]
            if self.smap[2 * i] + self.smap[2 * i + 1] > self.realsize:
                return self._tar("invalid sparse map (a fragment past the real size)")
        if total != data:
            return self._tar("invalid sparse map (its sizes do not add up to the data)")
        self.sidx = 0
        self.spos = self.smap[0] if self.snum else 0
        self.sleft = self.smap[1] if self.snum else 0
        self.state = ST_DATA
        if data == 0:
            return self._data_done()
        return 0

    cdef int _apply_pax(self) noexcept nogil:
        """Parse the pending PAX records ("%d %s=%s\\n") over the header's fields."""
        cdef char *s = self.pax.p
        cdef size_t n = self.pax.len, i = 0, j, k, rl
        cdef int64_t v
        cdef char *key
        cdef char *val
        cdef size_t kl, vl
        cdef Xattr *xa
        while i < n:
            j = i
            while j < n and s[j] >= c'0' and s[j] <= c'9':
                j += 1
            if j == i or j >= n or s[j] != c' ' or parse_decimal(s + i, j - i, &v):
                return self._tar("malformed PAX record")
            rl = <size_t>v
            if rl < j - i + 3 or i + rl > n or s[i + rl - 1] != c'\n':
                return self._tar("malformed PAX record length")
            key = s + j + 1
            k = j + 1
            while k < i + rl - 1 and s[k] != c'=':
                k += 1
            if k >= i + rl - 1:
                return self._tar("malformed PAX record (no '=')")
            kl = k - (j + 1)
            val = s + k + 1
            vl = i + rl - 1 - (k + 1)
            s[k] = 0                     # the key becomes a C string
            s[i + rl - 1] = 0            # so does the value
            if vl == 0 and not (kl > 13 and memcmp(key, b"SCHILY.xattr.", 13) == 0) and \
                    not (kl > 11 and memcmp(key, b"GNU.sparse.", 11) == 0):
                i += rl                  # an empty value keeps the header's field (Go's mergePAX)
                continue
            if kl == 4 and memcmp(key, b"path", 4) == 0:
                if memchr(val, 0, vl) != NULL:
                    return self._tar("PAX path with a NUL byte")
                buf_set(&self.raw, val, vl)
            elif kl == 8 and memcmp(key, b"linkpath", 8) == 0:
                if memchr(val, 0, vl) != NULL:
                    return self._tar("PAX linkpath with a NUL byte")
                buf_set(&self.link, val, vl)
            elif kl == 4 and memcmp(key, b"size", 4) == 0:
                if parse_decimal(val, vl, &v):
                    return self._tar("invalid PAX size")
                self.size = v
            elif kl == 3 and memcmp(key, b"uid", 3) == 0:
                if parse_decimal(val, vl, &v) or v > MAX_ID:
                    return self._tar("invalid PAX uid")
                self.uid = <uid_t>v
            elif kl == 3 and memcmp(key, b"gid", 3) == 0:
                if parse_decimal(val, vl, &v) or v > MAX_ID:
                    return self._tar("invalid PAX gid")
                self.gid = <gid_t>v
            elif kl == 5 and memcmp(key, b"mtime", 5) == 0:
                if parse_pax_time(val, vl, &self.times[1]):
                    return self._tar("invalid PAX mtime")
            elif kl == 5 and memcmp(key, b"atime", 5) == 0:
                if parse_pax_time(val, vl, &self.times[0]):
                    return self._tar("invalid PAX atime")
                self.has_atime = True
            elif kl > 13 and memcmp(key, b"SCHILY.xattr.", 13) == 0:
                if self.nxattrs == self.xattr_cap:
                    self.xattr_cap = self.xattr_cap * 2 if self.xattr_cap else 8
                    xa = <Xattr *>realloc(self.xattrs, sizeof(Xattr) * self.xattr_cap)
                    if xa == NULL:
                        return self._os(errno.ENOMEM, "reading xattrs")
                    self.xattrs = xa
                self.xattrs[self.nxattrs].key = key + 13
                self.xattrs[self.nxattrs].value = val
                self.xattrs[self.nxattrs].size = vl
                self.nxattrs += 1
            elif kl > 11 and memcmp(key, b"GNU.sparse.", 11) == 0:
                if self._pax_sparse(key + 11, kl - 11, val, vl) < 0:
                    return -1
            i += rl
        return 0

    cdef int _pax_sparse(self, const char *k, size_t kl, const char *val, size_t vl) noexcept nogil:
        """GNU.sparse.* records: 1.0 (map in the data), 0.1 (map in "map"), 0.0 (offset/numbytes)."""
        cdef int64_t v, off = 0
        cdef size_t i = 0, j
        cdef int got = 0
        if (kl == 4 and memcmp(k, b"name", 4) == 0):
            return buf_set(&self.sname, val, vl)
        if (kl == 8 and memcmp(k, b"realsize", 8) == 0) or (kl == 4 and memcmp(k, b"size", 4) == 0):
            if parse_decimal(val, vl, &v):
                return self._tar("invalid GNU.sparse size")
            self.realsize = <uint64_t>v
            return 0
        if kl == 5 and memcmp(k, b"major", 5) == 0:
            if vl != 1 or val[0] != c'1':
                return self._tar("unsupported GNU sparse version")
            self.sparse = 2
            return 0
        if kl == 3 and memcmp(k, b"map", 3) == 0:
            self.sparse = 1
            while i < vl:
                j = i
                while j < vl and val[j] != c',':
                    j += 1
                if parse_decimal(val + i, j - i, &v):
                    return self._tar("invalid GNU.sparse.map")
                got += 1
                if got % 2:
                    off = v
                elif self._add_fragment(<uint64_t>off, <uint64_t>v) < 0:
                    return -1
                i = j + 1
            if got % 2:
                return self._tar("invalid GNU.sparse.map")
            return 0
        if kl == 6 and memcmp(k, b"offset", 6) == 0:          # 0.0: offset, numbytes, ...
            if parse_decimal(val, vl, &v):
                return self._tar("invalid GNU.sparse.offset")
            self.spos = <uint64_t>v
            return 0
        if kl == 8 and memcmp(k, b"numbytes", 8) == 0:
            if parse_decimal(val, vl, &v):
                return self._tar("invalid GNU.sparse.numbytes")
            self.sparse = 1
            return self._add_fragment(self.spos, <uint64_t>v)
        return 0                         # minor, numblocks: nothing to do

    # -- one entry -------------------------------------------------------------

    cdef int _entry(self) noexcept nogil:
        cdef size_t k
        cdef char t = self.type
        cdef int rc
        cdef uint64_t data = <uint64_t>self.size
        if t == c'1' or t == c'2' or t == c'3' or t == c'4' or t == c'5' or t == c'6':
            data = 0                     # header-only types, whatever size says (Go)
        elif t != c'0':
            return self._tar("unsupported tar entry type")
        rc = clean_path(self.raw.p, self.raw.len, &self.name)
        if rc:
            return self._tar("name with a NUL byte") if rc == errno.EINVAL else self._os(rc, "")
        if self.name.len == 0:
            return self._skip(data)      # the root keeps its mode and owner
        k = self.name.len
        while k > 0 and self.name.p[k - 1] != c'/':
            k -= 1
        buf_set(&self.parent, self.name.p, k - 1 if k else 0)
        self.base = self.name.p + k
        if self._open_parent() < 0:
            return -1
        if self.base[0] == c'.' and strncmp(self.base, b".wh.", 4) == 0:   # base may be 1 byte
            if self._whiteout() < 0:
                return -1
            return self._skip(data)
        if t == c'0':
            return self._file(data)
        if t == c'5':
            rc = self._dir()
        elif t == c'2':
            rc = self._symlink()
        elif t == c'1':
            rc = self._hardlink()
        else:
            rc = self._node()
        if rc < 0:
            return -1
        return self._skip(0)

    cdef gid_t _new_gid(self, int dfd) noexcept nogil:
        """The group a file made in dfd gets: dfd's when it is setgid, else ours."""
        cdef c.stat st
        if c.fstat(dfd, &st) == 0 and st.st_mode & 0o2000:
            return st.st_gid
        return self.egid

    cdef void _refresh_gids(self) noexcept nogil:
        """An existing directory took new metadata: what new files get may have changed."""
        cdef int i
        self.root_gid = self._new_gid(self.root)
        for i in range(NCACHE):
            if self.cache[i].fd >= 0:
                self.cache[i].new_gid = self._new_gid(self.cache[i].fd)

    cdef int _open_parent(self) noexcept nogil:
        """self.pfd: the parent of the entry, from the cache, opened in the root, or made."""
        cdef uint64_t h
        cdef Slot *s
        cdef int fd
        if self.parent.len == 0:
            self.pfd = self.root
            self.pgid = self.root_gid
            return 0
        h = fnv1a(self.parent.p, self.parent.len)
        s = &self.cache[h & (NCACHE - 1)]
        if s.fd >= 0 and s.hash == h and s.len == self.parent.len and \
                memcmp(s.path, self.parent.p, s.len) == 0:
            self.pfd = s.fd
            self.pgid = s.new_gid
            return 0
        fd = c.snap_openat2(self.root, self.parent.p, DIR_FLAGS, IN_ROOT)
        if fd < 0 and errno.errno == errno.ENOENT:
            if self._make_parents(self.parent.p) < 0:
                return -1
            fd = c.snap_openat2(self.root, self.parent.p, DIR_FLAGS, IN_ROOT)
        if fd < 0:
            if errno.errno == errno.ENOTDIR:
                return self._tar("a parent directory of the entry is not a directory")
            return self._os(errno.errno, "opening the parent directory")
        if s.fd >= 0:
            c.close(s.fd)
        free(s.path)
        s.path = <char *>malloc(self.parent.len + 1)
        if s.path == NULL:
            c.close(fd)
            s.fd = -1
            return self._os(errno.ENOMEM, "")
        memcpy(s.path, self.parent.p, self.parent.len + 1)
        s.len = self.parent.len
        s.hash = h
        s.fd = fd
        s.new_gid = self._new_gid(fd)
        self.pfd = fd
        self.pgid = s.new_gid
        return 0

    cdef void _flush_cache(self, int keep) noexcept nogil:
        """Forget cached parents (all but the fd ``keep``): a path may resolve elsewhere now."""
        cdef int i
        for i in range(NCACHE):
            if self.cache[i].fd >= 0 and self.cache[i].fd != keep:
                c.close(self.cache[i].fd)
                self.cache[i].fd = -1
                free(self.cache[i].path)
                self.cache[i].path = NULL

    cdef int _root_path(self, const char *want, Buf *out) noexcept nogil:
        """out = want with this layer's symlinks resolved inside the root (containerd's
        fs.RootPath): components that do not exist are kept as names, ``..`` pops one.

        The slow path, taken only when the kernel's resolution met a missing
        component; the result has no symlinks left (except missing ones' targets).
        """
        cdef Buf rest
        cdef size_t i, j, k
        cdef int fd, err, hops = 0, rc = 0
        cdef c.stat st
        cdef ssize_t ln
        cdef char target[4097]
        rest.p = NULL
        rest.len = rest.cap = 0
        out.len = 0
        if buf_reserve(out, 0) or buf_set(&rest, want, strlen(want)):
            buf_free(&rest)
            return self._os(errno.ENOMEM, "")
        out.p[0] = 0
        i = 0
        while i < rest.len:
            while i < rest.len and rest.p[i] == c'/':
                i += 1
            j = i
            while j < rest.len and rest.p[j] != c'/':
                j += 1
            if j == i or (j - i == 1 and rest.p[i] == c'.'):
                i = j
                continue
            if j - i == 2 and rest.p[i] == c'.' and rest.p[i + 1] == c'.':
                k = out.len
                while k > 0 and out.p[k - 1] != c'/':
                    k -= 1
                out.len = k - 1 if k > 0 else 0
                out.p[out.len] = 0
                i = j
                continue
            k = out.len
            if out.len:
                buf_add(out, "/", 1)
            if buf_add(out, rest.p + i, j - i):
                rc = self._os(errno.ENOMEM, "")
                break
            fd = c.snap_openat2(self.root, out.p, c.O_PATH | c.O_NOFOLLOW | c.O_CLOEXEC,
                                IN_ROOT | c.RESOLVE_NO_SYMLINKS)
            i = j
            if fd < 0:
                continue                 # missing (or below a file): kept as a name
            if c.fstat(fd, &st) == 0 and c.S_ISLNK(st.st_mode):
                ln = c.readlinkat(fd, "", target, 4096)
                err = errno.errno
                c.close(fd)
                hops += 1
                if ln < 0 or hops > 255:
                    rc = self._os(err if ln < 0 else errno.ELOOP, "resolving a symlink")
                    break
                target[ln] = 0
                out.len = 0 if target[0] == c'/' else k     # drop the symlink's own name
                out.p[out.len] = 0
                # rest = target + "/" + rest[i:]
                buf_set(&self.scratch, target, <size_t>ln)
                buf_add(&self.scratch, "/", 1)
                if buf_add(&self.scratch, rest.p + i, rest.len - i) or \
                        buf_set(&rest, self.scratch.p, self.scratch.len):
                    rc = self._os(errno.ENOMEM, "")
                    break
                i = 0
                continue
            c.close(fd)
        buf_free(&rest)
        return rc

    cdef int _make_parents(self, const char *want) noexcept nogil:
        """Make the missing directories of the path ``want`` inside the root.

        ``want`` is resolved as containerd's fs.RootPath does (a dangling
        symlink of this layer leads to its target, inside the root); each
        missing component is then made, opened with RESOLVE_NO_SYMLINKS.
        """
        cdef Buf path
        cdef size_t i
        cdef int fd, pfd, rc = 0
        cdef char saved
        path.p = NULL
        path.len = path.cap = 0
        if self._root_path(want, &path) < 0:
            buf_free(&path)
            return -1
        pfd = -1
        i = 0
        while i < path.len and rc == 0:
            i += 1
            while i < path.len and path.p[i] != c'/':
                i += 1
            saved = path.p[i]
            path.p[i] = 0
            fd = c.snap_openat2(self.root, path.p, DIR_FLAGS, IN_ROOT | c.RESOLVE_NO_SYMLINKS)
            if fd < 0 and errno.errno == errno.ENOENT:
                rc = self._make_dir(pfd if pfd >= 0 else self.root, path.p)
                if rc == 0:
                    fd = c.snap_openat2(self.root, path.p, DIR_FLAGS, IN_ROOT | c.RESOLVE_NO_SYMLINKS)
            path.p[i] = saved
            if rc:
                break
            if fd < 0:
                rc = self._tar("a parent directory of the entry is not a directory") \
                    if errno.errno in (errno.ENOTDIR, errno.ELOOP) else \
                    self._os(errno.errno, "making parents")
                break
            if pfd >= 0:
                c.close(pfd)
            pfd = fd
        if pfd >= 0:
            c.close(pfd)
        buf_free(&path)
        return rc

    cdef int _make_dir(self, int dfd, const char *path) noexcept nogil:
        """mkdir an implied parent (path: from the root, no symlinks); it takes the nearest
        lower layer's metadata (a directory there), or 0755."""
        cdef const char *comp = strrchr(path, c'/')
        cdef int i, fd
        cdef c.stat st
        cdef bint found = False
        comp = comp + 1 if comp != NULL else path
        if c.mkdirat(dfd, comp, 0o700) < 0 and errno.errno != errno.EEXIST:
            return self._os(errno.errno, "making a parent directory")
        for i in range(self.nlowers):
            fd = c.snap_openat2(self.lowers[i], path, c.O_PATH | c.O_NOFOLLOW | c.O_CLOEXEC,
                                c.RESOLVE_IN_ROOT | c.RESOLVE_NO_SYMLINKS)
            if fd < 0:
                if errno.errno == errno.ENOENT:
                    continue
                break                    # a symlink or a file on the way: defaults
            found = c.fstat(fd, &st) == 0 and c.S_ISDIR(st.st_mode)
            if found and self._copy_xattrs(fd, dfd, comp) < 0:
                c.close(fd)
                return -1
            c.close(fd)
            break
        if found:
            if c.fchownat(dfd, comp, st.st_uid, st.st_gid, NOFOLLOW) < 0:
                return self._os(errno.errno, "chown of a parent directory")
            if c.fchmodat(dfd, comp, st.st_mode & 0o7777, 0) < 0:
                return self._os(errno.errno, "chmod of a parent directory")
            return self._defer_times(path, st.st_atim, st.st_mtim, True, True)
        if c.fchmodat(dfd, comp, 0o755, 0) < 0:
            return self._os(errno.errno, "chmod of a parent directory")
        return self._defer_times(path, self.times[0], self.times[1], False, True)

    cdef int _copy_xattrs(self, int lower, int dfd, const char *comp) noexcept nogil:
        """The lower directory's xattrs (O_PATH fd) onto the new one, comp in dfd."""
        cdef int src = c.snap_openat(lower, ".", DIR_FLAGS)
        cdef int dst, err = 0
        if src < 0:
            return self._os(errno.errno, "reading a parent directory's xattrs")
        dst = c.snap_openat(dfd, comp, DIR_FLAGS | c.O_NOFOLLOW)
        if dst < 0 or copy_xattrs(src, dst) < 0:
            err = errno.errno            # before the closes below can change it
        c.close(src)
        if dst >= 0:
            c.close(dst)
        if err:
            return self._os(err, "copying a parent directory's xattrs")
        return 0

    cdef int _defer_times(self, const char *name, timespec atime, timespec mtime,
                          bint set_times, bint implied) noexcept nogil:
        cdef DirTime *d
        cdef size_t cap
        if self.ndirs == self.dirs_cap:
            cap = self.dirs_cap * 2 if self.dirs_cap else 256
            d = <DirTime *>realloc(self.dirs, sizeof(DirTime) * cap)
            if d == NULL:
                return self._os(errno.ENOMEM, "")
            self.dirs = d
            self.dirs_cap = cap
        d = &self.dirs[self.ndirs]
        d.name = <char *>malloc(strlen(name) + 1)
        if d.name == NULL:
            return self._os(errno.ENOMEM, "")
        memcpy(d.name, name, strlen(name) + 1)
        d.times[0] = atime
        d.times[1] = mtime
        d.set_times = set_times
        d.implied = implied
        self.ndirs += 1
        return 0

    cdef int _replace(self, bint keep_dir) noexcept nogil:
        """Remove what is at (pfd, base) unless keep_dir and it is a directory.

        Returns 1 when a directory was kept, 0 when the name is free, -1 on error.
        """
        cdef c.stat st
        cdef int err
        if c.snap_fstatat(self.pfd, self.base, &st, NOFOLLOW) < 0:
            if errno.errno == errno.ENOENT:
                return 0
            return self._os(errno.errno, "replacing an existing entry")
        if keep_dir and c.S_ISDIR(st.st_mode):
            err = self._mount_root_at(self.base, st.st_dev)
            if err:
                return self._os(err, "merging with an existing directory")
            return 1
        if c.S_ISDIR(st.st_mode) or c.S_ISLNK(st.st_mode):
            self._flush_cache(self.pfd)
        err = remove_at(self.pfd, self.base)
        if err == errno.EBUSY:
            return self._os(err, "removing what the entry replaces: a mount lies at or below "
                            "it, left in place with the directories above it")
        if err:
            return self._os(err, "removing what the entry replaces")
        return 0

    cdef int _mount_root_at(self, const char *name, dev_t dev) noexcept nogil:
        """EXDEV if name (a directory in the parent, of device dev) is a mount's root, else 0
        (or an errno); a bind mount of the same file system has the parent's device."""
        cdef linux.statx stx
        cdef c.stat pst
        if linux.snap_lstatx(self.pfd, name, &stx) < 0:
            return errno.errno
        if stx.stx_attributes & linux.STATX_ATTR_MOUNT_ROOT:
            return errno.EXDEV
        if c.fstat(self.pfd, &pst) < 0:  # before Linux 5.8, no attribute: the device tells
            return errno.errno
        return errno.EXDEV if pst.st_dev != dev else 0

    cdef bint _is_whiteout_at(self, const char *name) noexcept nogil:
        cdef c.stat st
        return c.snap_fstatat(self.pfd, name, &st, NOFOLLOW) == 0 and c.S_ISCHR(st.st_mode) \
            and st.st_rdev == 0

    cdef int _whiteout(self) noexcept nogil:
        cdef const char *orig = self.base + 4
        cdef int err
        cdef bint retried = False
        if strcmp(self.base, b".wh..wh..opq") == 0:
            if c.fsetxattr(self.pfd, "trusted.overlay.opaque", "y", 1, 0) < 0:
                return self._os(errno.errno, "setting trusted.overlay.opaque on the directory")
            return 0
        if orig[0] == 0 or (orig[0] == c'.' and (orig[1] == 0 or (orig[1] == c'.' and orig[2] == 0))):
            return self._tar("invalid whiteout name (it names the directory or its parent)")
        while c.mknodat(self.pfd, orig, c.S_IFCHR, 0) < 0:
            if errno.errno != errno.EEXIST or retried:
                return self._os(errno.errno, "making the whiteout device (mknod c 0 0)")
            retried = True
            self.base = orig
            if self._replace(False) < 0:
                return -1
        self.base = orig
        if c.fchownat(self.pfd, orig, self.uid, self.gid, NOFOLLOW) < 0:
            return self._os(errno.errno, "chown of the whiteout device")
        if c.utimensat(self.pfd, orig, self.times, NOFOLLOW) < 0:
            return self._os(errno.errno, "setting times of the whiteout device")
        return 0

    cdef int _file(self, uint64_t data) noexcept nogil:
        cdef int r
        while True:
            self.fd = c.snap_openat(self.pfd, self.base,
                               c.O_WRONLY | c.O_CREAT | c.O_EXCL | c.O_NOFOLLOW | c.O_CLOEXEC, 0o600)
            if self.fd >= 0:
                break
            if errno.errno != errno.EEXIST:
                return self._os(errno.errno, "creating a file")
            if self._replace(False) < 0:
                return -1
        if self.sparse:
            self.remain = data
            self.pad = (BLOCK - data % BLOCK) % BLOCK
            if self.sparse == 2:         # the map comes first in the data
                self.state = ST_SPARSE_MAP
                self.smap_read = 0
                self.smaptext.len = 0
                self.stext_pos = self.stext_got = 0
                self.stext_count = -1
                if data == 0:
                    return self._tar("truncated sparse map")
                return 0
            return self._sparse_start(data)
        if data == 0:
            if self._finish_file() < 0:
                return -1
            return self._skip(0)
        self.state = ST_DATA
        self.remain = data
        self.pad = (BLOCK - data % BLOCK) % BLOCK
        return 0

    cdef int _finish_file(self) noexcept nogil:
        cdef int fd = self.fd
        self.fd = -1
        if self.sparse and ftruncate(fd, <off_t>self.realsize) < 0:
            return self._os_closing(fd, "setting the size of a sparse file")
        # a new file is ours already, with the group pgid: a chown would change nothing
        if (self.uid != self.euid or self.gid != self.pgid) and \
                c.fchown(fd, self.uid, self.gid) < 0:
            return self._os_closing(fd, "chown")
        if self._xattrs(fd, NULL, True) < 0:
            c.close(fd)
            return -1
        if c.fchmod(fd, self.mode) < 0:
            return self._os_closing(fd, "chmod")
        if c.futimens(fd, self.times) < 0:
            return self._os_closing(fd, "setting times")
        if c.close(fd) < 0 and errno.errno != errno.EINTR:
            return self._os(errno.errno, "closing a file")
        return 0

    cdef int _xattrs(self, int fd, const char *path, bint file_or_dir) noexcept nogil:
        """Set the entry's SCHILY.xattr.* on fd, or on path (lsetxattr) when fd < 0."""
        cdef int i, rc, err
        cdef const char *key
        for i in range(self.nxattrs):
            key = self.xattrs[i].key
            if strncmp(key, b"trusted.", 8) == 0:   # keys are NUL-terminated, maybe short
                self._warn(key, "trusted.* xattrs are not applied")
                continue
            if self.xattrs[i].size == 0 and strcmp(key, b"security.capability") == 0:
                # the kernel stores an empty one but refuses to read it back (EINVAL),
                # so the upper could never be diffed
                self._warn(key, "empty: the kernel would refuse to read it back")
                continue
            if fd >= 0:
                rc = c.fsetxattr(fd, key, self.xattrs[i].value, self.xattrs[i].size, 0)
            else:
                rc = c.lsetxattr(path, key, self.xattrs[i].value, self.xattrs[i].size, 0)
            if rc < 0:
                err = errno.errno
                if err == errno.EOPNOTSUPP:
                    self._warn(key, "not supported by the file system")
                elif err == errno.EPERM and not file_or_dir and strncmp(key, b"user.", 5) == 0:
                    self._warn(key, "user.* xattrs need a file or a directory")
                else:
                    return self._os(err, "setting an xattr")
        return 0

    cdef int _path_xattrs(self, bint file_or_dir) noexcept nogil:
        """xattrs on a symlink or device: lsetxattr through /proc/self/fd/<parent>/<base>."""
        cdef char path[4200]
        if self.nxattrs == 0:
            return 0
        snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", self.pfd, self.base)
        return self._xattrs(-1, path, file_or_dir)

    cdef int _dir(self) noexcept nogil:
        cdef int r = 0, rx, fd
        cdef bint opaque = False
        while c.mkdirat(self.pfd, self.base, 0o700) < 0:
            if errno.errno != errno.EEXIST:
                return self._os(errno.errno, "making a directory")
            if self._is_whiteout_at(self.base):
                opaque = True            # re-created: hide what the lowers had here
            r = self._replace(True)
            if r < 0:
                return -1
            if r == 1:
                break
        if c.fchownat(self.pfd, self.base, self.uid, self.gid, NOFOLLOW) < 0:
            return self._os(errno.errno, "chown of a directory")
        if self.nxattrs or opaque:
            fd = c.snap_openat(self.pfd, self.base, DIR_FLAGS | c.O_NOFOLLOW)
            if fd < 0:
                return self._os(errno.errno, "opening a directory")
            if opaque and c.fsetxattr(fd, "trusted.overlay.opaque", "y", 1, 0) < 0:
                return self._os_closing(fd, "setting trusted.overlay.opaque on the directory")
            rx = self._xattrs(fd, NULL, True)
            c.close(fd)
            if rx < 0:
                return -1
        if c.fchmodat(self.pfd, self.base, self.mode, 0) < 0:
            return self._os(errno.errno, "chmod of a directory")
        if r == 1:                       # merged: it may be a cached parent
            self._refresh_gids()
        return self._defer_times(self.name.p, self.times[0], self.times[1], True, False)

    cdef int _symlink(self) noexcept nogil:
        while c.symlinkat(self.link.p, self.pfd, self.base) < 0:
            if errno.errno != errno.EEXIST:
                return self._os(errno.errno, "making a symlink")
            if self._replace(False) < 0:
                return -1
        if c.fchownat(self.pfd, self.base, self.uid, self.gid, NOFOLLOW) < 0:
            return self._os(errno.errno, "chown of a symlink")
        if self._path_xattrs(False) < 0:
            return -1
        if c.utimensat(self.pfd, self.base, self.times, NOFOLLOW) < 0:
            return self._os(errno.errno, "setting times of a symlink")
        return 0

    cdef int _node(self) noexcept nogil:
        cdef mode_t kind
        if self.type == c'3':
            kind = c.S_IFCHR
        elif self.type == c'4':
            kind = c.S_IFBLK
        else:
            kind = c.S_IFIFO
        while c.mknodat(self.pfd, self.base, kind | 0o600,
                        c.makedev(self.devmajor, self.devminor)) < 0:
            if errno.errno != errno.EEXIST:
                return self._os(errno.errno, "making a device or fifo (mknod)")
            if self._replace(False) < 0:
                return -1
        if c.fchownat(self.pfd, self.base, self.uid, self.gid, NOFOLLOW) < 0:
            return self._os(errno.errno, "chown")
        if self._path_xattrs(False) < 0:
            return -1
        if c.fchmodat(self.pfd, self.base, self.mode, 0) < 0:
            return self._os(errno.errno, "chmod")
        if c.utimensat(self.pfd, self.base, self.times, NOFOLLOW) < 0:
            return self._os(errno.errno, "setting times")
        return 0

    cdef int _hardlink(self) noexcept nogil:
        """Link to the target resolved in the root (clamped there); its last component kept."""
        cdef size_t k
        cdef int tfd, rc, err
        cdef const char *tbase
        cdef char tbuf[4097]
        cdef c.stat st
        if clean_path(self.link.p, self.link.len, &self.scratch):
            return self._tar("hard link target with a NUL byte")
        if self.scratch.len == 0:
            return self._tar("hard link to a directory (the root)")
        k = self.scratch.len
        while k > 0 and self.scratch.p[k - 1] != c'/':
            k -= 1
        if self.scratch.len - k > 4096:
            return self._tar("hard link target name too long")
        memcpy(tbuf, self.scratch.p + k, self.scratch.len - k + 1)  # scratch is reused below
        tbase = tbuf
        if k:
            self.scratch.p[k - 1] = 0
            tfd = c.snap_openat2(self.root, self.scratch.p, DIR_FLAGS, IN_ROOT)
            if tfd < 0 and errno.errno == errno.ENOENT:
                # a missing component in a symlink of the target's path: containerd's RootPath
                if buf_set(&self.link, self.scratch.p, strlen(self.scratch.p)):
                    return self._os(errno.ENOMEM, "resolving the hard link target")
                if self._root_path(self.link.p, &self.parent) < 0:
                    return -1            # its own error (ELOOP, ENAMETOOLONG, ...)
                tfd = c.snap_openat2(self.root, self.parent.p, DIR_FLAGS, IN_ROOT)
            if tfd < 0:
                if errno.errno == errno.ENOENT or errno.errno == errno.ENOTDIR:
                    return self._tar("hard link target does not exist")
                return self._os(errno.errno, "opening the hard link target's directory")
        else:
            tfd = self.root
        rc = c.snap_fstatat(tfd, tbase, &st, NOFOLLOW)
        if rc < 0 or c.S_ISDIR(st.st_mode):
            if tfd != self.root:
                c.close(tfd)
            if rc == 0:
                return self._tar("hard link to a directory")
            return self._tar("hard link target does not exist")
        rc = 0
        while c.linkat(tfd, tbase, self.pfd, self.base, 0) < 0:
            err = errno.errno
            if err != errno.EEXIST:
                rc = self._tar("hard link target does not exist") if err == errno.ENOENT \
                    else self._os(err, "making a hard link")
                break
            if self._replace(False) < 0:
                rc = -1
                break
        if tfd != self.root:
            c.close(tfd)
        return rc

    # -- the end ---------------------------------------------------------------

    def finish(self):
        """Check the stream ended on an entry boundary; set directory times. Returns entries."""
        cdef int rc
        self._check_usable()
        if self.state == ST_DATA or self.state == ST_EXT or self.state == ST_SPARSE_EXT or \
                self.state == ST_SPARSE_MAP or self.hdr_have or \
                (self.state == ST_SKIP and (self.remain or self.pad)):
            self.ekind = E_TAR
            buf_set(&self.emsg, "truncated stream: the entry's data ends early", 45)
            self._raise()
        with nogil:
            rc = self._set_dir_times()
        if rc < 0:
            self._raise()
        return self.entries

    cdef int _set_dir_times(self) noexcept nogil:
        cdef size_t i
        cdef int fd, rc
        self.raw.len = 0
        for i in range(self.ndirs):
            if not self.dirs[i].set_times:
                continue
            fd = c.snap_openat2(self.root, self.dirs[i].name, DIR_FLAGS | c.O_NOFOLLOW, IN_ROOT)
            if fd < 0:
                if errno.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue             # replaced later in the stream
                buf_set(&self.raw, self.dirs[i].name, strlen(self.dirs[i].name))
                return self._os(errno.errno, "opening a directory to set its times")
            if c.futimens(fd, self.dirs[i].times) < 0:
                rc = self._os_closing(fd, "setting times of a directory")
                buf_set(&self.raw, self.dirs[i].name, strlen(self.dirs[i].name))
                return rc
            c.close(fd)
        return 0


def syncfs(int fd):
    """syncfs(2): flush the file system that holds fd. Raises OSError."""
    cdef int rc, err
    with nogil:
        rc = c.syncfs(fd)
        err = errno.errno
    if rc < 0:
        raise OSError(err, strerror(err).decode())


# ---- diff: an upper directory back into a tar ----------------------------------

class UpperError(ValueError):
    """An upper directory that cannot be written as a layer (redirect_dir, metacopy, changes)."""

    def __init__(self, message, entry=None):
        super().__init__(message)
        self.entry = entry


cdef extern from "<stdlib.h>" nogil:
    void qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *) noexcept nogil)

cdef extern from "<string.h>" nogil:
    int strcmp(const char *a, const char *b)


cdef int cmp_names(const void *a, const void *b) noexcept nogil:
    return strcmp((<const char **>a)[0], (<const char **>b)[0])


cdef struct Frame:
    int fd                     # -1 while closed (more than OPEN_DIRS levels above the walk)
    dev_t dev                  # of the directory, kept while its fd is closed
    uint64_t ino
    Buf arena                  # the names, NUL-separated
    char **names               # sorted, into arena
    size_t n, i
    size_t pathlen             # length of the path prefix ("a/b/") of this directory


cdef struct Link:
    dev_t dev
    uint64_t ino
    char *path                 # NULL: free slot


cdef enum:
    OUT_FLUSH = 1 << 20        # bytes handed to the sink at a time
    # Directory fds the tar walk keeps open: the levels further up are closed
    # and reopened through ".." on the way back, so a tree deeper than the fd
    # limit (1024 by default) is still written.
    OPEN_DIRS = 64
    POOL_MAX = 8               # spare output buffers kept for reuse

cdef uint64_t OCTAL7 = 2097151          # the largest number a 7-digit octal field holds
cdef int64_t OCTAL11 = 8589934591       # ... and an 11-digit one


cdef class _Pool:
    """Output buffers that pieces hand back when the sink is done with them.

    Refilling a buffer the consumer has released costs neither a copy nor
    page faults (a fresh 1 MiB bytes object per piece cost both: about a
    quarter of the walk). Touched with the GIL held only.
    """
    cdef Buf spare[POOL_MAX]
    cdef int n

    def __dealloc__(self):
        while self.n:
            self.n -= 1
            buf_free(&self.spare[self.n])

    cdef Buf take(self):
        """A spare buffer, or an empty one (buf_reserve allocates it)."""
        cdef Buf b
        if self.n:
            self.n -= 1
            return self.spare[self.n]
        memset(&b, 0, sizeof(Buf))
        return b

    cdef void give(self, Buf *b):
        if self.n < POOL_MAX:
            b.len = 0
            self.spare[self.n] = b[0]
            self.n += 1
        else:
            buf_free(b)


cdef class _Piece:
    """One full output buffer, read-only to the sink; back to the pool when released."""
    cdef _Pool pool
    cdef Buf b

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.b.p, <Py_ssize_t>self.b.len, 1, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def __dealloc__(self):
        if self.pool is not None:
            self.pool.give(&self.b)
        else:
            buf_free(&self.b)


cdef class _TarWriter:
    cdef object sink
    cdef _Pool pool
    cdef object exc
    cdef Buf out
    cdef Buf path
    cdef Buf pax
    cdef Buf xnames
    cdef Buf xval
    cdef Buf target
    cdef Frame *stack
    cdef size_t depth, stack_cap
    cdef Link *links
    cdef size_t nlinks, links_cap
    cdef public uint64_t entries
    cdef int ekind, eerrno
    cdef Buf emsg
    cdef Buf eop
    cdef bint opaque, redirect

    def __cinit__(self, sink):
        self.sink = sink
        self.pool = _Pool()

    def __dealloc__(self):
        cdef size_t i
        while self.depth:
            self._pop()
        free(self.stack)
        for i in range(self.links_cap):
            free(self.links[i].path)
        free(self.links)
        buf_free(&self.out)
        buf_free(&self.path)
        buf_free(&self.pax)
        buf_free(&self.xnames)
        buf_free(&self.xval)
        buf_free(&self.target)
        buf_free(&self.emsg)
        buf_free(&self.eop)

    cdef int _os(self, int err, const char *op) noexcept nogil:
        self.ekind = E_OS
        self.eerrno = err
        buf_set(&self.eop, op, strlen(op))
        return -1

    cdef int _bad(self, const char *msg) noexcept nogil:
        self.ekind = E_TAR
        buf_set(&self.emsg, msg, strlen(msg))
        return -1

    cdef int _raise(self) except -1:
        if self.exc is not None:
            exc, self.exc = self.exc, None
            raise exc
        entry = self.path.p[:self.path.len].decode("utf-8", "surrogateescape") \
            if self.path.p != NULL else None
        if self.ekind == E_TAR:
            raise UpperError(
                f"{entry!r}: {self.emsg.p[:self.emsg.len].decode()}", entry)
        e = OSError(self.eerrno, strerror(self.eerrno).decode(), entry)
        e.add_note(f"while {self.eop.p[:self.eop.len].decode()} (writing the layer)")
        raise e

    cdef int _flush(self) noexcept nogil:
        if self.out.len == 0:
            return 0
        with gil:
            try:
                piece = _Piece()
                piece.b = self.out
                piece.pool = self.pool
                self.out = self.pool.take()
                self.sink(memoryview(piece))
            except BaseException as e:
                self.exc = e
                return -1
        return 0

    cdef char *_room(self, size_t n) noexcept nogil:
        """n bytes at the end of the output buffer (flushed first when full)."""
        cdef char *p
        if self.out.len + n > OUT_FLUSH and self.out.len and self._flush() < 0:
            return NULL
        if buf_reserve(&self.out, n):
            self._os(errno.ENOMEM, "")
            return NULL
        p = self.out.p + self.out.len
        self.out.len += n
        return p

    # -- headers ---------------------------------------------------------------

    cdef void _pax_record(self, const char *key, const char *val, size_t vl) noexcept nogil:
        cdef size_t kl = strlen(key)
        cdef size_t base = kl + vl + 3, digits = 1, total
        cdef size_t t
        cdef char num[24]
        t = base
        while t >= 10:
            digits += 1
            t //= 10
        total = base + digits
        t = total
        digits = 1
        while t >= 10:
            digits += 1
            t //= 10
        if base + digits != total:
            total = base + digits
        snprintf(num, sizeof(num), "%zu ", total)
        buf_add(&self.pax, num, strlen(num))
        buf_add(&self.pax, key, kl)
        buf_add(&self.pax, "=", 1)
        buf_add(&self.pax, val, vl)
        buf_add(&self.pax, "\n", 1)

    cdef int _block(self, char type, const char *name, size_t nl, const char *link, size_t ll,
                    uint64_t mode, uint64_t uid, uint64_t gid, uint64_t size, int64_t mtime,
                    unsigned int dmaj, unsigned int dmin) noexcept nogil:
        """Write one ustar header block."""
        cdef char *b = self._room(BLOCK)
        cdef unsigned int sum = 0
        cdef size_t i
        if b == NULL:
            return -1
        memset(b, 0, BLOCK)
        memcpy(b, name, nl if nl < 100 else 100)
        snprintf(b + 100, 8, "%07llo", <unsigned long long>(mode & 0o7777))
        snprintf(b + 108, 8, "%07llo", <unsigned long long>(uid if uid <= OCTAL7 else 0))
        snprintf(b + 116, 8, "%07llo", <unsigned long long>(gid if gid <= OCTAL7 else 0))
        snprintf(b + 124, 12, "%011llo", <unsigned long long>(size if size <= <uint64_t>OCTAL11 else 0))
        snprintf(b + 136, 12, "%011llo", <unsigned long long>(
            mtime if 0 <= mtime <= OCTAL11 else 0))
        memset(b + 148, c' ', 8)
        b[156] = type
        if ll:
            memcpy(b + 157, link, ll if ll < 100 else 100)
        memcpy(b + 257, b"ustar\x0000", 8)
        snprintf(b + 329, 8, "%07o", <unsigned int>(dmaj if dmaj <= OCTAL7 else 0))
        snprintf(b + 337, 8, "%07o", <unsigned int>(dmin if dmin <= OCTAL7 else 0))
        for i in range(<size_t>BLOCK):
            sum += <unsigned char>b[i]
        snprintf(b + 148, 8, "%06o", sum)
        b[155] = c' '
        return 0

    cdef int _header(self, char type, const char *name, size_t nl, const char *link, size_t ll,
                     c.stat *st, uint64_t size, bint xattrs) noexcept nogil:
        """PAX extended header when needed (long names, big numbers, nanoseconds, xattrs), then the header."""
        cdef char num[48]
        cdef int64_t sec = st.st_mtim.tv_sec
        cdef long nsec = st.st_mtim.tv_nsec
        cdef size_t k, pl
        cdef int n
        cdef char *p
        if not xattrs:
            self.pax.len = 0
        # records in key order: SCHILY.xattr.* (already in pax when xattrs), gid, linkpath,
        # mtime, path, size, uid
        if <uint64_t>st.st_gid > OCTAL7:
            snprintf(num, sizeof(num), "%u", st.st_gid)
            self._pax_record("gid", num, strlen(num))
        if ll > 100:
            self._pax_record("linkpath", link, ll)
        if sec < 0:
            sec, nsec = 0, 0
        if nsec or sec > OCTAL11:
            n = snprintf(num, sizeof(num), "%lld.%09ld", <long long>sec, nsec)
            while num[n - 1] == c'0':
                n -= 1
            if num[n - 1] == c'.':
                n -= 1
            self._pax_record("mtime", num, <size_t>n)
        if nl > 100:
            self._pax_record("path", name, nl)
        if size > <uint64_t>OCTAL11:
            snprintf(num, sizeof(num), "%llu", <unsigned long long>size)
            self._pax_record("size", num, strlen(num))
        if <uint64_t>st.st_uid > OCTAL7:
            snprintf(num, sizeof(num), "%u", st.st_uid)
            self._pax_record("uid", num, strlen(num))
        if self.pax.len:
            pl = self.pax.len
            if pl > MAX_EXT:
                # readers, ours and Go's archive/tar, refuse it: a layer nobody could apply
                return self._bad("its extended header (names, xattrs) is larger than 1 MiB")
            if self._block(c'x', b"././@PaxHeader", 14, NULL, 0, 0, 0, 0, pl, 0, 0, 0) < 0:
                return -1
            if self._data(self.pax.p, pl) < 0:
                return -1
            self.pax.len = 0
        self.entries += 1
        return self._block(type, name, nl, link, ll, st.st_mode, st.st_uid, st.st_gid, size,
                           sec, c.major(st.st_rdev), c.minor(st.st_rdev))

    cdef int _data(self, const char *p, size_t n) noexcept nogil:
        """Bytes plus zero padding to the block."""
        cdef size_t padded = (n + BLOCK - 1) // BLOCK * BLOCK
        cdef char *b = self._room(padded)
        if b == NULL:
            return -1
        memcpy(b, p, n)
        memset(b + n, 0, padded - n)
        return 0

    cdef int _file_data(self, int fd, uint64_t size) noexcept nogil:
        """Read size bytes of fd straight into the output, then the padding."""
        cdef uint64_t left = size
        cdef size_t chunk, pad
        cdef ssize_t r
        cdef char *b
        while left:
            chunk = <size_t>(left if left < OUT_FLUSH else OUT_FLUSH)
            b = self._room(chunk)
            if b == NULL:
                return -1
            self.out.len -= chunk        # claimed only as far as read
            while chunk:
                r = c.c_read(fd, self.out.p + self.out.len, chunk)
                if r < 0:
                    if errno.errno == errno.EINTR:
                        continue
                    return self._os(errno.errno, "reading a file")
                if r == 0:
                    return self._bad("the file shrank while the layer was written")
                self.out.len += <size_t>r
                chunk -= <size_t>r
                left -= <uint64_t>r
        pad = (BLOCK - size % BLOCK) % BLOCK
        if pad:
            b = self._room(pad)
            if b == NULL:
                return -1
            memset(b, 0, pad)
        return 0

    # -- xattrs ----------------------------------------------------------------

    cdef int _xattrs(self, int fd, const char *lpath) noexcept nogil:
        """Collect the entry's xattrs as sorted SCHILY.xattr.* records in self.pax.

        Sets self.opaque; overlayfs' private trusted.overlay.* are dropped, and
        redirect/metacopy ones are refused (the upper then is not a plain layer).
        """
        cdef ssize_t n, v
        cdef size_t i, cnt = 0
        cdef char **names
        cdef char *s
        cdef char key[300]
        self.pax.len = 0
        self.opaque = False
        while True:
            n = c.flistxattr(fd, NULL, 0) if fd >= 0 else c.llistxattr(lpath, NULL, 0)
            if n < 0:
                if errno.errno == errno.EOPNOTSUPP:
                    return 0
                return self._os(errno.errno, "listing xattrs")
            if n == 0:
                return 0
            self.xnames.len = 0
            if buf_reserve(&self.xnames, <size_t>n):
                return self._os(errno.ENOMEM, "")
            n = c.flistxattr(fd, self.xnames.p, <size_t>n) if fd >= 0 else \
                c.llistxattr(lpath, self.xnames.p, <size_t>n)
            if n >= 0:
                break
            if errno.errno != errno.ERANGE:
                return self._os(errno.errno, "listing xattrs")
        self.xnames.len = <size_t>n
        i = 0
        while i < <size_t>n:
            cnt += 1
            i += strlen(self.xnames.p + i) + 1
        names = <char **>malloc(sizeof(char *) * cnt)
        if names == NULL:
            return self._os(errno.ENOMEM, "")
        i = 0
        cnt = 0
        while i < <size_t>n:
            names[cnt] = self.xnames.p + i
            cnt += 1
            i += strlen(self.xnames.p + i) + 1
        qsort(names, cnt, sizeof(char *), cmp_names)
        for i in range(cnt):
            s = names[i]
            if strncmp(s, "trusted.overlay.", 16) == 0:
                if strcmp(s + 16, "redirect") == 0 or strcmp(s + 16, "metacopy") == 0:
                    free(names)
                    return self._bad("overlayfs wrote a redirect_dir or metacopy xattr here: "
                                     "the upper directory is not a plain layer")
                if strcmp(s + 16, "opaque") == 0:
                    v = c.fgetxattr(fd, s, key, 2) if fd >= 0 else c.lgetxattr(lpath, s, key, 2)
                    self.opaque = v == 1 and key[0] == c'y'
                continue
            # Not in a layer: trusted.* (no apply sets them, ours included) and the
            # host's SELinux label (the same change would differ by host and context).
            if strncmp(s, "trusted.", 8) == 0 or strcmp(s, "security.selinux") == 0:
                continue
            while True:
                v = c.fgetxattr(fd, s, NULL, 0) if fd >= 0 else c.lgetxattr(lpath, s, NULL, 0)
                if v < 0:
                    break
                self.xval.len = 0
                if buf_reserve(&self.xval, <size_t>v):
                    free(names)
                    return self._os(errno.ENOMEM, "")
                v = c.fgetxattr(fd, s, self.xval.p, <size_t>v) if fd >= 0 else \
                    c.lgetxattr(lpath, s, self.xval.p, <size_t>v)
                if v >= 0 or errno.errno != errno.ERANGE:
                    break
            if v < 0:
                if errno.errno == errno.ENODATA:
                    continue
                free(names)
                return self._os(errno.errno, "reading an xattr")
            snprintf(key, sizeof(key), "SCHILY.xattr.%s", s)
            self._pax_record(key, self.xval.p, <size_t>v)
        free(names)
        return 0

    # -- hard links ------------------------------------------------------------

    cdef int _link_of(self, c.stat *st, const char **found) noexcept nogil:
        """The first path of this inode, or record this path as it; found NULL if new."""
        cdef size_t i, cap, j
        cdef Link *old
        cdef Link *nl
        found[0] = NULL
        if self.nlinks * 2 >= self.links_cap:
            cap = self.links_cap * 2 if self.links_cap else 1024
            nl = <Link *>malloc(sizeof(Link) * cap)
            if nl == NULL:
                return self._os(errno.ENOMEM, "")
            memset(nl, 0, sizeof(Link) * cap)
            old = self.links
            for i in range(self.links_cap):
                if old[i].path != NULL:
                    j = (old[i].ino * 11400714819323198485ULL ^ old[i].dev) & (cap - 1)
                    while nl[j].path != NULL:
                        j = (j + 1) & (cap - 1)
                    nl[j] = old[i]
            free(old)
            self.links = nl
            self.links_cap = cap
        j = (st.st_ino * 11400714819323198485ULL ^ st.st_dev) & (self.links_cap - 1)
        while self.links[j].path != NULL:
            if self.links[j].ino == st.st_ino and self.links[j].dev == st.st_dev:
                found[0] = self.links[j].path
                return 0
            j = (j + 1) & (self.links_cap - 1)
        self.links[j].path = <char *>malloc(self.path.len + 1)
        if self.links[j].path == NULL:
            return self._os(errno.ENOMEM, "")
        memcpy(self.links[j].path, self.path.p, self.path.len + 1)
        self.links[j].dev = st.st_dev
        self.links[j].ino = st.st_ino
        self.nlinks += 1
        return 0

    # -- the walk --------------------------------------------------------------

    cdef void _pop(self) noexcept nogil:
        cdef Frame *f = &self.stack[self.depth - 1]
        if f.fd >= 0:
            c.close(f.fd)
        buf_free(&f.arena)
        free(f.names)
        self.depth -= 1

    cdef int _up(self) noexcept nogil:
        """Pop the finished directory; reopen its parent through ".." if it was closed."""
        cdef Frame *f = &self.stack[self.depth - 1]
        cdef Frame *parent
        cdef c.stat st
        cdef int fd
        if self.depth >= 2 and self.stack[self.depth - 2].fd < 0:
            parent = &self.stack[self.depth - 2]
            self.path.len = f.pathlen
            self.path.p[f.pathlen] = 0
            fd = c.snap_openat(f.fd, "..", DIR_FLAGS | c.O_NOFOLLOW)
            if fd < 0:
                return self._os(errno.errno, "reopening a parent directory")
            if c.fstat(fd, &st) < 0:
                self._os(errno.errno, "reopening a parent directory")
                c.close(fd)
                return -1
            if st.st_dev != parent.dev or st.st_ino != parent.ino:
                c.close(fd)
                return self._bad("it was moved while the layer was written")
            parent.fd = fd
        self._pop()
        return 0

    cdef int _close_far(self) noexcept nogil:
        """Close the fd of the level OPEN_DIRS above the newest, keeping its identity."""
        cdef Frame *f
        cdef c.stat st
        if self.depth <= OPEN_DIRS:
            return 0
        f = &self.stack[self.depth - 1 - OPEN_DIRS]
        if f.fd < 0:
            return 0
        if c.fstat(f.fd, &st) < 0:
            return self._os(errno.errno, "stat")
        f.dev = st.st_dev
        f.ino = st.st_ino
        c.close(f.fd)
        f.fd = -1
        return 0

    cdef int _push(self, int fd) noexcept nogil:
        """A frame for the directory fd (owned from now on) with its names sorted."""
        cdef Frame *f
        cdef Frame *ns
        cdef size_t cap, i, cnt
        cdef ssize_t n, off
        cdef linux.snap_dirent64 *d
        cdef char buf[GETDENTS_BUF]
        if self.depth == self.stack_cap:
            cap = self.stack_cap * 2 if self.stack_cap else 64
            ns = <Frame *>realloc(self.stack, sizeof(Frame) * cap)
            if ns == NULL:
                c.close(fd)
                return self._os(errno.ENOMEM, "")
            self.stack = ns
            self.stack_cap = cap
        f = &self.stack[self.depth]
        memset(f, 0, sizeof(Frame))
        f.fd = fd
        f.pathlen = self.path.len
        self.depth += 1
        if self._close_far() < 0:
            return -1
        cnt = 0
        while True:
            n = dirwalk.read_dents(fd, buf, GETDENTS_BUF)
            if n < 0:
                return self._os(<int>-n, "reading a directory")
            if n == 0:
                break
            off = 0
            while off < n:
                d = <linux.snap_dirent64 *>(buf + off)
                off += d.d_reclen
                if dirwalk.is_dot(d.d_name):
                    continue
                if buf_add(&f.arena, d.d_name, strlen(d.d_name) + 1):
                    return self._os(errno.ENOMEM, "")
                cnt += 1
        f.names = <char **>malloc(sizeof(char *) * (cnt + 1))
        if f.names == NULL:
            return self._os(errno.ENOMEM, "")
        i = 0
        off = 0
        while i < cnt:
            f.names[i] = f.arena.p + off
            off += <ssize_t>strlen(f.arena.p + off) + 1
            i += 1
        qsort(f.names, cnt, sizeof(char *), cmp_names)
        f.n = cnt
        return 0

    cdef int _open_file(self, int dfd, const char *name, const c.stat *st) noexcept nogil:
        """The regular file ``name`` (``st`` from fstatat) opened for reading, or -1.

        O_NONBLOCK: if the name became a fifo since fstatat, open must not wait.
        But then a write lease held elsewhere (fcntl F_SETLEASE) fails the open
        with EWOULDBLOCK instead of waiting for its holder to let go, so the
        file is reopened through an O_PATH descriptor of it (the same inode: no
        rename can swap a fifo in) without O_NONBLOCK, and waits, as tar does.
        """
        cdef c.stat now
        cdef char proc[32]
        cdef int pfd, err
        cdef int fd = open_noatime(dfd, name, FILE_FLAGS)
        if fd < 0 and errno.errno == errno.EAGAIN:  # EWOULDBLOCK on Linux
            pfd = c.snap_openat(dfd, name, c.O_PATH | c.O_NOFOLLOW | c.O_CLOEXEC)
            if pfd < 0:
                return self._os(errno.errno, "opening a file")
            if c.fstat(pfd, &now) < 0 or not c.S_ISREG(now.st_mode):
                c.close(pfd)
                return self._bad("it was replaced while the layer was written")
            snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd)
            fd = open_noatime(c.AT_FDCWD, proc, c.O_RDONLY | c.O_CLOEXEC)  # follows the fd link
            err = errno.errno
            c.close(pfd)
            errno.errno = err
        if fd < 0:
            return self._os(errno.errno, "opening a file")
        # the mode too: a freed inode number can come back as a fifo's
        if c.fstat(fd, &now) < 0 or now.st_dev != st.st_dev or \
                now.st_ino != st.st_ino or not c.S_ISREG(now.st_mode):
            c.close(fd)
            return self._bad("it was replaced while the layer was written")
        return fd

    cdef int _walk(self, int root) noexcept nogil:
        cdef Frame *f
        cdef char *name
        cdef c.stat st
        cdef int fd, dfd
        cdef ssize_t ln
        cdef const char *first
        cdef char lpath[4200]
        cdef size_t nl
        fd = c.snap_openat(root, ".", DIR_FLAGS)
        if fd < 0:
            return self._os(errno.errno, "opening the upper directory")
        self.path.len = 0
        if buf_reserve(&self.path, 0):
            c.close(fd)
            return self._os(errno.ENOMEM, "")
        self.path.p[0] = 0
        if self._push(fd) < 0:
            return -1
        while self.depth:
            f = &self.stack[self.depth - 1]
            if f.i == f.n:
                if self._up() < 0:
                    return -1
                continue
            name = f.names[f.i]
            f.i += 1
            dfd = f.fd
            self.path.len = f.pathlen
            if c.snap_fstatat(dfd, name, &st, NOFOLLOW) < 0:
                buf_add(&self.path, name, strlen(name))
                if errno.errno == errno.ENOENT:
                    return self._bad("removed while the layer was written")
                return self._os(errno.errno, "stat")
            if c.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                buf_add(&self.path, ".wh.", 4)
                buf_add(&self.path, name, strlen(name))
                if self._header(c'0', self.path.p, self.path.len, NULL, 0, &st, 0, False) < 0:
                    return -1
                continue
            buf_add(&self.path, name, strlen(name))
            if c.S_ISDIR(st.st_mode):
                fd = c.snap_openat(dfd, name, DIR_FLAGS | c.O_NOFOLLOW)
                if fd < 0:
                    return self._os(errno.errno, "opening a directory")
                if self._xattrs(fd, NULL) < 0:
                    c.close(fd)
                    return -1
                buf_add(&self.path, "/", 1)
                if self._header(c'5', self.path.p, self.path.len, NULL, 0, &st, 0, True) < 0:
                    c.close(fd)
                    return -1
                if self.opaque:
                    nl = self.path.len
                    buf_add(&self.path, ".wh..wh..opq", 12)
                    if self._header(c'0', self.path.p, self.path.len, NULL, 0, &st, 0, False) < 0:
                        c.close(fd)
                        return -1
                    self.path.len = nl
                    self.path.p[nl] = 0
                if self._push(fd) < 0:
                    return -1
                continue
            if c.S_ISSOCK(st.st_mode):
                continue                 # tar has no sockets (neither has containerd's diff)
            if st.st_nlink > 1:  # of any type, as containerd's: symlinks, fifos, devices too
                if self._link_of(&st, &first) < 0:
                    return -1
                if first != NULL:
                    if self._header(c'1', self.path.p, self.path.len, first, strlen(first),
                                    &st, 0, False) < 0:
                        return -1
                    continue
            if c.S_ISREG(st.st_mode):
                fd = self._open_file(dfd, name, &st)
                if fd < 0:
                    return -1
                if self._xattrs(fd, NULL) < 0 or \
                        self._header(c'0', self.path.p, self.path.len, NULL, 0, &st,
                                     <uint64_t>st.st_size, True) < 0 or \
                        self._file_data(fd, <uint64_t>st.st_size) < 0:
                    c.close(fd)
                    return -1
                c.close(fd)
                continue
            snprintf(lpath, sizeof(lpath), "/proc/self/fd/%d/%s", dfd, name)
            if self._xattrs(-1, lpath) < 0:
                return -1
            if c.S_ISLNK(st.st_mode):
                self.target.len = 0
                if buf_reserve(&self.target, 4096):
                    return self._os(errno.ENOMEM, "")
                ln = c.readlinkat(dfd, name, self.target.p, 4096)
                if ln < 0:
                    return self._os(errno.errno, "reading a symlink")
                self.target.len = <size_t>ln
                self.target.p[ln] = 0
                if self._header(c'2', self.path.p, self.path.len, self.target.p, self.target.len,
                                &st, 0, True) < 0:
                    return -1
            elif c.S_ISCHR(st.st_mode) or c.S_ISBLK(st.st_mode) or c.S_ISFIFO(st.st_mode):
                if self._header(c'3' if c.S_ISCHR(st.st_mode) else c'4' if c.S_ISBLK(st.st_mode)
                                else c'6', self.path.p, self.path.len, NULL, 0, &st, 0, True) < 0:
                    return -1
        self.path.len = 0
        if self._room(2 * BLOCK) == NULL:
            return -1
        memset(self.out.p + self.out.len - 2 * BLOCK, 0, 2 * BLOCK)
        return self._flush()


def write_tar(int root_fd, sink):
    """Write the directory root_fd as a layer tar, in 1 MiB pieces handed to sink(bytes).

    Overlay's native diff: one sorted walk (names compared as bytes, a
    directory before its contents); character devices 0/0 become ``.wh.NAME``,
    ``trusted.overlay.opaque=y`` a ``.wh..wh..opq`` entry after its directory;
    other ``trusted.*`` xattrs and ``security.selinux`` are left out; hard links inside the tree
    (of any type but directories) are tar hard links to the first path. ustar headers with numeric owners,
    PAX records only where needed (names over 100 bytes, big numbers, mtime
    nanoseconds when not zero, xattrs). Returns the number of entries.
    Raises UpperError (redirect_dir/metacopy xattrs, a tree changed meanwhile),
    OSError, or what sink raised.
    """
    cdef _TarWriter w = _TarWriter(sink)
    cdef int rc
    with nogil:
        rc = w._walk(root_fd)
    if rc < 0:
        w._raise()
    return w.entries
