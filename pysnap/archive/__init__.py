"""OCI layers: apply a layer into a snapshot, diff a snapshot into a layer (issue 12).

``compression`` detects and decodes/encodes the blob, ``pipeline`` runs that
in threads beside snapcore's compiled loops (``snapcore.fsops``), ``apply``
and ``diff`` hold the policy, ``guard`` the per-snapshot lock and the mark a
killed apply leaves.
"""

from .layer import Layer

__all__ = ["Layer"]
