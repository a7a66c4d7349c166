from libc.string cimport strerror


cdef inline int raise_oserror(int err, object path, object path2=None) except -1:
    # OSError() picks FileNotFoundError, PermissionError, ... from err
    raise OSError(err, strerror(err).decode(), path, None, path2)
