"""The order in which objects can be created: dependencies first.

A pure function of what a backup records, so backup and restore agree and it
can be tested against fixed schemas. Each object gets a rank by kind (plain
tables, then dictionaries, then tables that point at others such as
Distributed, then views, then materialized views) and edges from what it is
known to need; a topological sort picks the lowest rank first among the
objects that are ready. Unknown or circular dependencies fall back to rank
order, and restore retries what still fails.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Protocol

from casbackup.clickhouse.sql import (
    bare_identifiers,
    materialized_view_target,
    qualified_references,
    statement_kind,
)

# Table engines that only make sense once the objects they point at exist.
_POINTING_ENGINES = frozenset({"Distributed", "Merge", "Buffer", "Dictionary"})


class Orderable(Protocol):
    @property
    def database(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def engine(self) -> str: ...

    @property
    def create_sql(self) -> str: ...


def rank(engine: str, create_sql: str) -> int:
    try:
        kind = statement_kind(create_sql)
    except ValueError:
        kind = "TABLE"
    if kind == "MATERIALIZED VIEW" or engine == "MaterializedView":
        return 4
    if kind in ("VIEW", "LIVE VIEW", "WINDOW VIEW") or engine in ("View", "LiveView", "WindowView"):
        return 3
    if engine in _POINTING_ENGINES:
        return 2
    if kind == "DICTIONARY":
        return 1
    return 0


def is_inner_table(name: str) -> bool:
    """A materialized view's implicit storage: created by the view, never by us."""
    return name.startswith((".inner.", ".inner_id."))


def references(obj: Orderable, known: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Objects among ``known`` that ``obj``'s definition mentions (a superset of real dependencies)."""
    if rank(obj.engine, obj.create_sql) == 0:
        return set()  # plain tables need nothing but their database
    found = {ref for ref in qualified_references(obj.create_sql) if ref in known}
    found |= {
        (obj.database, n) for n in bare_identifiers(obj.create_sql) if (obj.database, n) in known
    }
    target = materialized_view_target(obj.create_sql)
    if target is not None:
        to_table = (target[0] or obj.database, target[1])
        if to_table in known:  # a TO table left out of the selection is no object to order after
            found.add(to_table)
    found.discard((obj.database, obj.name))
    return found


def creation_order(
    objects: Sequence[Orderable],
    extra_edges: Iterable[tuple[tuple[str, str], tuple[str, str]]] = (),
) -> list[int]:
    """Indexes of ``objects`` in an order that creates dependencies first.

    ``extra_edges`` are (needed, needing) pairs known from the server (e.g.
    ``system.tables.dependencies_*``).
    """
    key = [(o.database, o.name) for o in objects]
    position = {k: i for i, k in enumerate(key)}
    known = set(key)
    needs: list[set[int]] = [set() for _ in objects]
    for i, obj in enumerate(objects):
        needs[i] = {position[r] for r in references(obj, known)}
    for needed, needing in extra_edges:
        if needed in position and needing in position and needed != needing:
            needs[position[needing]].add(position[needed])
    ranks = [rank(o.engine, o.create_sql) for o in objects]
    waiting = [set(n) for n in needs]
    dependents: list[list[int]] = [[] for _ in objects]
    for i, n in enumerate(needs):
        for j in n:
            dependents[j].append(i)
    ready = [(ranks[i], i) for i in range(len(objects)) if not waiting[i]]
    heapq.heapify(ready)
    order: list[int] = []
    done: set[int] = set()
    while len(order) < len(objects):
        if not ready:  # a cycle: release the lowest-ranked waiting object
            rest = min((ranks[i], i) for i in range(len(objects)) if i not in done)
            waiting[rest[1]].clear()
            heapq.heappush(ready, rest)
        _, i = heapq.heappop(ready)
        if i in done:
            continue
        done.add(i)
        order.append(i)
        for j in dependents[i]:
            waiting[j].discard(i)
            if not waiting[j] and j not in done:
                heapq.heappush(ready, (ranks[j], j))
    return order
