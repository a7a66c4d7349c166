# The C entry of snapcore.keys for the other compiled modules: mdb's walk
# builds each Info straight from the name and record in LMDB's map.

cdef object info_from(const char *name, size_t name_len, const char *record, size_t record_len)
