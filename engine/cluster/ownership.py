"""What this node may serve: the OwnershipTable lives in shm.ownership (the ingress, a lower
layer, reads it per request); the lease agent and the node take it from here."""
from shm.ownership import OwnershipTable, now_ns  # noqa: F401
