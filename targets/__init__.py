"""Device profiles as data: one TOML file per device in targets/profiles/.

To add a device, add one file `profiles/NAME.toml` (see host-cpu.toml for the fields).
"""

from edgediff.targets.profile import TargetProfile, available_targets, load_target

__all__ = ["TargetProfile", "available_targets", "load_target"]
