"""Who computes what: the pure arithmetic of splitting work across ranks.

Examples: contiguous, near-equal spans of the (class-ordered) probe. Gram blocks: each rank
computes its own span's triangle, and for every other rank one rectangle of the pair's block
chosen so that both ranks do the same number of products (see ``gram_tasks``). Parameters:
whole tensors, greedily balanced by size.
"""

from __future__ import annotations

from collections.abc import Sequence

from monitor.errors import EngineError

Span = tuple[int, int]  # examples [start, stop)


def example_spans(size: int, world_size: int) -> list[Span]:
    """Contiguous spans of ``size`` examples, one per rank, sizes differing by at most one."""
    if size < world_size:
        raise EngineError(
            f"the probe has {size} examples, fewer than the {world_size} ranks: every rank needs "
            "at least one; start fewer processes"
        )
    return [(size * r // world_size, size * (r + 1) // world_size) for r in range(world_size)]


def gram_tasks(rank: int, spans: Sequence[Span]) -> list[tuple[Span, Span]]:
    """The (rows, columns) rectangles of the Gram that ``rank`` computes besides its own span's
    triangle; with their mirror images, every rank's together cover each entry exactly once.

    Rank r's rows are its own examples (their gradients are what it computes first). The block
    between ranks r and s (n × n examples) is shared so that both do n²/2 products: the *wide*
    one takes all its rows against the first half of the other's columns, the *tall* one the
    second half of its rows against all the other's columns; mirrored, the tall one's rectangle
    is exactly what the wide one left out. Which of the pair is wide alternates with the parity
    of r + s so that no rank recomputes more of the others' gradients than it must.
    """
    a, b = spans[rank]
    tasks: list[tuple[Span, Span]] = []
    for other, (c, d) in enumerate(spans):
        if other == rank:
            continue
        low, high = sorted((rank, other))
        wide = low if (low + high) % 2 else high
        if rank == wide:
            tasks.append(((a, b), (c, (c + d) // 2)))
        else:
            tasks.append((((a + b) // 2, b), (c, d)))
    return tasks


def parameter_shares(
    names: Sequence[str], sizes: Sequence[int], world_size: int
) -> list[list[str]]:
    """Whole parameter tensors per rank, balanced by size (largest first, each to the least
    loaded rank; ties to the lower rank), each share in the model's order."""
    if len(names) < world_size:
        raise EngineError(
            f"the model has {len(names)} selected parameter tensors, fewer than the "
            f"{world_size} ranks: the parameter split gives each rank whole tensors; start "
            "fewer processes or split the examples instead (--split examples)"
        )
    loads = [0] * world_size
    owner: dict[str, int] = {}
    for index in sorted(range(len(names)), key=lambda i: -sizes[i]):  # stable: model order
        rank = min(range(world_size), key=lambda r: loads[r])
        owner[names[index]] = rank
        loads[rank] += sizes[index]
    return [[name for name in names if owner[name] == rank] for rank in range(world_size)]


def literal_pattern(name: str) -> str:
    """An ``fnmatch`` pattern matching ``name`` and nothing else (``[``, ``*``, ``?`` quoted)."""
    return "".join(f"[{char}]" if char in "[*?" else char for char in name)
