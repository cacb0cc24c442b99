"""Device profiles as data: one TOML file per device in targets/profiles/.

To add a device, add one file `profiles/NAME.toml` (fields: src/edgediff/targets/README.md); nothing else.
"""

from edgediff.targets.listing import format_targets_table, targets_json
from edgediff.targets.profile import (
    PRECISIONS,
    ComputeUnit,
    Memory,
    OpReport,
    OpSupport,
    TargetProfile,
    available_targets,
    load_profile_file,
    load_target,
)

__all__ = [
    "PRECISIONS",
    "ComputeUnit",
    "Memory",
    "OpReport",
    "OpSupport",
    "TargetProfile",
    "available_targets",
    "format_targets_table",
    "load_profile_file",
    "load_target",
    "targets_json",
]
