"""Build snapcore: one Extension per .pyx (as httptools and borg do)."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = bool(os.environ.get("SNAPCORE_DEBUG"))
CFLAGS = (["-O0", "-g"] if DEBUG else ["-O2"]) + ["-Wall", "-Wsign-compare"]


def ext(name: str, libraries: tuple[str, ...] = ()) -> Extension:
    return Extension(
        f"snapcore.{name}",
        [f"snapcore/{name}.pyx"],
        define_macros=[("_GNU_SOURCE", None)],
        extra_compile_args=CFLAGS,
        libraries=list(libraries),
    )


setup(
    ext_modules=cythonize(
        [
            ext("du"),
            ext("mount"),
            ext("keys"),
            ext("statx"),
            ext("wire"),
            ext("fsops"),
            ext("rmtree"),
            ext("mdb", ("lmdb",)),  # the system's liblmdb (Debian: liblmdb-dev)
        ],
        compiler_directives={"language_level": "3", "embedsignature": True},
        annotate=DEBUG,
    )
)
