"""OCI images on snapshots: unpack an image into a chain of snapshots, export a chain as one.

``unpack(sn, source)`` reads an OCI image layout (a directory or a tar) or a
``docker save`` archive and commits one snapshot per layer, named by its
chain ID; ``export(sn, name, dest)`` writes the chain under ``name`` as an
OCI image layout that containerd, umoci and registries read.
"""

from .export import export
from .oci import Descriptor, Platform, chain_ids
from .unpack import Image, unpack

__all__ = ["Descriptor", "Image", "Platform", "chain_ids", "export", "unpack"]
