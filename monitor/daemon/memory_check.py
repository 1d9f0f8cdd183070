"""``check``'s warning when class mode's class sums would not fit ``memory_limit``.

Exact class mode keeps one float64 sum of P values per class and split (sets·C·P·8 bytes,
ResNet-18 at 100 classes: 18 GB); projection mode keeps sets·C·K instead, K the projected
row's width (at most ``dim`` per parameter tensor, so it grows with the number of tensors),
or ``total_dim`` when the row is folded. The engine knows P and the tensors' shapes from the
parameter selection, the probe knows C and whether it has splits.
"""

from __future__ import annotations

from torch import nn

from monitor.config.schema import MonitorConfig
from monitor.errors import EngineError
from monitor.stiffness.inputs import DEFAULT_PROJECTION_DIM, ProbeSet
from monitor.stiffness.parameters import select_parameters
from monitor.stiffness.projection.projector import unfolded_width


def class_sums_bytes(parameters: int, probe: ProbeSet) -> int:
    """What class mode's float64 class sums of rows this wide take for this probe."""
    sets = 2 if probe.has_splits else 1
    return sets * len(probe.classes) * parameters * 8


def class_memory_warning(config: MonitorConfig, model: nn.Module, probe: ProbeSet) -> str | None:
    """The warning, or None when it fits, no limit is set, or pair mode is on."""
    stiffness = config.stiffness
    limit = stiffness.memory_limit
    if stiffness.mode != "class" or limit is None:
        return None
    try:
        selection = select_parameters(model, tuple(stiffness.include), tuple(stiffness.exclude))
    except EngineError:
        return None  # no parameter selected: the evaluation says so
    projection = stiffness.projection
    if projection is not None:
        unfolded = unfolded_width(projection.dim, projection.kind, selection.shapes)
        width = min(unfolded, projection.total_dim or unfolded)
        need = class_sums_bytes(width, probe)
        if need <= limit:
            return None
        return (
            f"{config.source}: stiffness.memory_limit: projection mode needs "
            f"{need / 2**30:.2f} GiB for its class sums ({len(probe.classes)} classes x "
            f"{width:,} projected values in float64), more than the limit of "
            f"{limit / 2**30:.2f} GiB; set a smaller stiffness.projection.total_dim "
            "(the row folded to that many values, docs/precision.md)"
        )
    need = class_sums_bytes(selection.numel, probe)
    if need <= limit:
        return None
    return (
        f"{config.source}: stiffness.memory_limit: exact class mode needs {need / 2**30:.2f} "
        f"GiB for its class sums ({len(probe.classes)} classes x {selection.numel:,} "
        f"parameters in float64), more than the limit of {limit / 2**30:.2f} GiB; select "
        f"fewer parameters or set stiffness.projection: {{dim: {DEFAULT_PROJECTION_DIM}}} "
        "(projection mode, docs/precision.md)"
    )
