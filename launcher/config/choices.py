"""The closed choices of the schema, as StrEnums: OmegaConf checks a value against them at compose time
("Invalid value 'flexx', expected one of [...]"), and a member compares equal to its string."""
from __future__ import annotations

from enum import StrEnum


class ExecutorKind(StrEnum):
    """Where a run starts (cluster.executor)."""

    local = "local"
    slurm = "slurm"
    container = "container"
