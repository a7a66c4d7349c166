# The C entry of snapcore.rmtree for the other compiled modules: fsops' applier
# removes what a layer entry replaces with it (cimported: a call through the
# function pointer Cython exports in rmtree's __pyx_capi__, resolved when fsops
# is imported). empty_tree, the Python entry, shares its walk.

cdef int remove_at(int dfd, const char *name) noexcept nogil
