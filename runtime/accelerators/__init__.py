"""Accelerator profiles and the compatibility matrix."""
from runtime.accelerators.profiles import (
    ROLES,
    AcceleratorProfile,
    Support,
    compatibility_matrix,
    get_profile,
    list_profiles,
    register_profile,
)

__all__ = ["ROLES", "AcceleratorProfile", "Support", "compatibility_matrix", "get_profile", "list_profiles",
           "register_profile"]
