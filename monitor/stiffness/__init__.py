"""The stiffness engine: exact gradient stiffness of a model on a fixed probe set.

``compute_stiffness`` is the entry point; ``ProbeSet`` and ``EngineOptions`` are what it
takes, ``StiffnessResult`` what it gives back.
"""

from monitor.stiffness.engine import compute_stiffness
from monitor.stiffness.inputs import EngineOptions, ProbeSet
from monitor.stiffness.outputs import OutputSpec
from monitor.stiffness.result import (
    ClassStiffness,
    Counts,
    DistanceProfile,
    PairSetStiffness,
    StiffnessResult,
)

__all__ = [
    "ClassStiffness",
    "Counts",
    "DistanceProfile",
    "EngineOptions",
    "OutputSpec",
    "PairSetStiffness",
    "ProbeSet",
    "StiffnessResult",
    "compute_stiffness",
]
