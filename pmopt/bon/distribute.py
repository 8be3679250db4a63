"""Model work of a sweep (PM scoring, LM-judge queries) split across the processes of `accelerate launch`.

The items are cut into chunks whose boundaries depend only on the item count and the chunk size, never
on the number of processes, and chunk c is computed by process c mod P. Every chunk is therefore the
same call, on the same inputs, as in a one-process run, so the gathered results are bit-identical to
one process by construction: nothing relies on a model's outputs being independent of what else shares
its batch (on a GPU, a different batch shape may pick a different kernel).

The results travel with `torch.distributed.all_gather_object`, so every process ends with all of them.
An error on one process is gathered too and raised on every process (the same message), so no process
is left waiting in a collective that the failed one never joins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pmopt.io import PmoptError


def chunk_bounds(n_items: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk of `chunk` items (the last may be shorter)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return [(start, min(start + chunk, n_items)) for start in range(0, n_items, chunk)]


def my_chunks(n_items: int, chunk: int, rank: int, world: int) -> list[tuple[int, int]]:
    """The chunks process `rank` of `world` computes: every world-th chunk, starting at its rank."""
    return chunk_bounds(n_items, chunk)[rank::world]


def all_gather(state, obj: Any) -> list:
    """`obj` of every process, in rank order (just `[obj]` in one process). `state` may provide its own
    `all_gather(obj)` (tests' fake process groups); otherwise torch.distributed's group is used."""
    if state is None or state.num_processes == 1:
        return [obj]
    if hasattr(state, "all_gather"):
        return state.all_gather(obj)
    import torch.distributed as dist

    gathered: list = [None] * state.num_processes
    dist.all_gather_object(gathered, obj)
    return gathered


def sharded_map(state, fn: Callable[[int, int], list], n_items: int, chunk: int,
                tally: list[int] | None = None) -> list[list]:
    """`fn(start, stop)` for every chunk of `n_items`, split across the processes of `state` (None: one
    process); returns every chunk's result, in chunk order, on every process.

    `tally`, when given, is extended with the number of items each process computed (rank order).
    """
    rank, world = (0, 1) if state is None else (state.process_index, state.num_processes)
    done: dict[int, list] = {}
    count, error = 0, None
    try:
        for start, stop in my_chunks(n_items, chunk, rank, world):
            done[start] = fn(start, stop)
            count += stop - start
    except PmoptError as exc:
        if world == 1:
            raise
        error = ("pmopt", str(exc))
    except Exception as exc:  # noqa: BLE001 - raised again below, on every process
        if world == 1:
            raise
        error = ("other", f"process {rank}: {type(exc).__name__}: {exc}")
    gathered = all_gather(state, (done, count, error))
    for *_, part_error in gathered:
        if part_error is not None:
            kind, message = part_error
            raise PmoptError(message) if kind == "pmopt" else RuntimeError(message)
    merged: dict[int, list] = {}
    for part_done, *_ in gathered:
        merged.update(part_done)
    if tally is not None:
        tally.extend(part_count for _, part_count, _ in gathered)
    return [merged[start] for start, _ in chunk_bounds(n_items, chunk)]


def sharded_list_map(state, fn: Callable[[Sequence], list], items: Sequence, chunk: int,
                     tally: list[int] | None = None) -> list:
    """`fn` over `items` in chunks (results concatenated in order), split across processes; `tally` as in
    `sharded_map`."""
    parts = sharded_map(state, lambda start, stop: list(fn(items[start:stop])), len(items), chunk, tally)
    return [result for part in parts for result in part]


__all__ = ["chunk_bounds", "my_chunks", "all_gather", "sharded_map", "sharded_list_map"]
