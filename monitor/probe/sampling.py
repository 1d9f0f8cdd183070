"""The probe set: a fixed, seeded per-class sample of the operator's labelled examples.

Stiffness is compared across checkpoints, so the probe must be the very same examples every
time (DESIGN §2): sampling is seeded per class and per split, and the result is sorted so its
order never depends on the file's. The source (a ``.pt``/``.npz`` file or a factory) is read
in ``monitor.probe.sources`` and its arrays checked in ``monitor.probe.raw``; their public
names are re-exported here.
Every problem is a ``ProbeError`` that names the source and says what was expected and what
was found.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterable, Sequence

import torch

from monitor.config.schema import ProbeConfig
from monitor.errors import ProbeError
from monitor.probe.raw import SPLITS, RawProbe, listed
from monitor.probe.sources import NUMPY_SUFFIXES, TORCH_SUFFIXES, read_probe_source
from monitor.stiffness.inputs import ProbeSet

__all__ = [
    "MIN_PER_CLASS",
    "NUMPY_SUFFIXES",
    "SPLITS",
    "TORCH_SUFFIXES",
    "WARN_PER_CLASS",
    "ProbeWarning",
    "RawProbe",
    "load_probe",
    "read_probe_source",
    "sample_per_class",
]

logger = logging.getLogger(__name__)

MIN_PER_CLASS = 2  # a within-class pair needs two distinct examples
WARN_PER_CLASS = 10  # spread ≈0.018 at 5 per class, 0.009 at 10 (DESIGN §2)


class ProbeWarning(UserWarning):
    """The probe loads, but some class has too few examples for a precise stiffness value."""


def load_probe(config: ProbeConfig) -> ProbeSet:
    """Read the configured source, check it, and draw the fixed per-class sample."""
    raw = read_probe_source(config)
    probe = sample_per_class(raw, config.per_class, config.seed, config.classes)
    logger.info(
        "probe: %d of %d examples, %d classes%s, from %s",
        probe.size,
        raw.size,
        len(probe.classes),
        ", train and val splits" if probe.has_splits else "",
        probe.source,
    )
    return probe


def sample_per_class(
    raw: RawProbe, per_class: int, seed: int, classes: Sequence[int] | None = None
) -> ProbeSet:
    """Choose up to ``per_class`` examples of each class (of each split, when there is one).

    Each (split, class) group is drawn with its own generator, seeded from ``seed``, the split
    and the class, so a group's draw does not depend on which other classes exist or were
    selected, and a larger ``per_class`` extends a smaller one's draw rather than replacing
    it. The result is sorted by (split: train then val, class, source index).
    """
    if per_class < MIN_PER_CLASS:
        raise ValueError(f"per_class must be >= {MIN_PER_CLASS}, got {per_class}")
    present = [int(c) for c in torch.unique(raw.targets).tolist()]
    if classes is None:
        wanted = present
    else:
        wanted = sorted({int(c) for c in classes})
        if not wanted:
            raise ProbeError(f"{raw.source}: probe.classes is empty; list classes or leave it out")
        absent = sorted(set(wanted) - set(present))
        if absent:
            raise ProbeError(
                f"{raw.source}: probe.classes lists {listed(absent)}, absent from the probe "
                f"(its classes are {listed(present)})"
            )

    groups = _groups(raw, wanted)
    too_few = [(split, c, idx.numel()) for split, c, idx in groups if idx.numel() < MIN_PER_CLASS]
    if too_few:
        raise ProbeError(
            f"{raw.source}: expected at least {MIN_PER_CLASS} examples of every class"
            f"{' in every split' if raw.is_train is not None else ''} (within-class stiffness "
            f"pairs distinct examples), got fewer for {_describe(too_few)}"
        )

    chosen: list[torch.Tensor] = []
    for split, c, idx in groups:
        if idx.numel() > per_class:
            generator = torch.Generator().manual_seed(_group_seed(seed, split, c))
            pick = torch.randperm(idx.numel(), generator=generator)[:per_class]
            idx = torch.sort(idx[pick]).values
        chosen.append(idx)
    small = [(s, c, idx.numel()) for (s, c, _), idx in zip(groups, chosen, strict=True)]
    small = [group for group in small if group[2] < WARN_PER_CLASS]
    if small:
        warnings.warn(
            f"{raw.source}: fewer than {WARN_PER_CLASS} probe examples for {_describe(small)}; "
            "within-class stiffness gets noisier with fewer examples per class (spread about "
            "0.018 at 5 per class, 0.009 at 10)",
            ProbeWarning,
            stacklevel=2,
        )

    index = torch.cat(chosen)
    return ProbeSet(
        inputs=raw.inputs[index],
        targets=raw.targets[index],
        is_train=None if raw.is_train is None else raw.is_train[index],
        token_targets=None if raw.token_targets is None else raw.token_targets[index],
        attention_mask=None if raw.attention_mask is None else raw.attention_mask[index],
        classes=tuple(wanted),
        source_indices=tuple(int(i) for i in index.tolist()),
        source=raw.source,
    )


# --- helpers ---------------------------------------------------------------------------------


def _groups(raw: RawProbe, classes: Sequence[int]) -> list[tuple[str, int, torch.Tensor]]:
    """(split, class, sorted source indices) for every present split and wanted class, in
    the result's order. Empty groups are kept so the count check can name them."""
    if raw.is_train is None:
        splits = [("all", torch.ones_like(raw.targets, dtype=torch.bool))]
    else:
        splits = [("train", raw.is_train), ("val", ~raw.is_train)]
        splits = [(name, mask) for name, mask in splits if bool(mask.any())]
    return [
        (name, c, torch.nonzero(mask & (raw.targets == c)).flatten())
        for name, mask in splits
        for c in classes
    ]


def _group_seed(seed: int, split: str, cls: int) -> int:
    """A stable 63-bit seed per (seed, split, class): Python's ``hash`` is salted per run."""
    digest = hashlib.blake2b(f"{seed}:{split}:{cls}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _describe(groups: Iterable[tuple[str, int, int]]) -> str:
    parts = [f"class {c}{'' if split == 'all' else f' ({split})'}: {n}" for split, c, n in groups]
    return listed(parts)
