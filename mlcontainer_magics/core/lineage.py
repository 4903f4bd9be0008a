"""Lineage: which earlier snapshots' ``--out`` values a run took as its ``--in`` values.

A run's input is linked to an earlier snapshot of the same kernel when its digest is that
snapshot's output digest: the kernel wrote back exactly the bytes the container returned (a
value edited in the notebook has another digest, so no false lineage). The digests are the
ones the run records anyway: nothing is hashed twice. A value whose file the kernel writes with
other bytes than the container did (a DataFrame written by another pyarrow) is not linked.

Pure (records in, data out)::

    output_rows(record), parent_ids(record)   what the store indexes of a record
    link(inputs, producers)                   a run's ``parents`` field
    graph_of(root, records)                   the DAG that led to a snapshot
    steps(graph)                              its snapshots in the order they ran
    format_lineage(graph), lineage_json(graph)

With a store: ``find_parents`` (by output digest, same kernel) and ``graph`` (walks parents).
A record's ``parents`` entry is ``{"input", "snapshot", "output", "digest"}``, or
``{"input", "from": "notebook", "digest"}`` for a value the notebook made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import SnapshotNotFound
from .formatting import MISSING, short_digest

NOTEBOOK = "notebook"


# -- what the store indexes ---------------------------------------------------------------


def output_rows(record: Mapping) -> list[tuple[str, str]]:
    """(output name, digest) of each --out value the snapshot brought back."""
    outputs = record.get("outputs")
    if not isinstance(outputs, Mapping):
        return []
    return [
        (str(name), rec["digest"])
        for name, rec in outputs.items()
        if isinstance(rec, Mapping) and isinstance(rec.get("digest"), str)
    ]


def parent_ids(record: Mapping) -> list[str]:
    """The snapshots a record took values from, each once, in the order of its inputs."""
    seen: list[str] = []
    for entry in _parents(record):
        sid = entry.get("snapshot")
        if isinstance(sid, str) and sid not in seen:
            seen.append(sid)
    return seen


def _parents(record: Mapping) -> list[Mapping]:
    parents = record.get("parents")
    if not isinstance(parents, list):
        return []
    return [p for p in parents if isinstance(p, Mapping)]


# -- linking a run --------------------------------------------------------------------------


def link(digests: Mapping[str, str | None], producers: Mapping[str, Sequence]) -> list[dict]:
    """A run's ``parents``: per input (name -> digest), the snapshot that produced that
    digest, else the notebook. ``producers``: digest -> [(snapshot, output name)], newest
    first; an output of the input's own name wins (a --out NAME sets the kernel's NAME), then
    the newest."""
    parents = []
    for name, digest in digests.items():
        if not isinstance(digest, str):
            continue  # never digested (the run failed first): nothing to say
        found = list(producers.get(digest) or ())
        if not found:
            parents.append({"input": name, "from": NOTEBOOK, "digest": digest})
            continue
        sid, output = next(((s, o) for s, o in found if o == name), found[0])
        parents.append({"input": name, "snapshot": sid, "output": output, "digest": digest})
    return parents


def find_parents(store, digests: Mapping, *, kernel: str, run_id: str) -> tuple[list[dict], dict]:
    """(parents, {snapshot: name}) of a run of ``kernel`` whose inputs have these digests
    (name -> digest): one indexed store query."""
    known = [d for d in digests.values() if isinstance(d, str)]
    rows = store.producers(known, kernel=kernel, exclude=run_id) if known else []
    producers: dict[str, list[tuple[str, str]]] = {}
    names = {}
    for digest, sid, output, name in rows:
        producers.setdefault(digest, []).append((sid, output))
        names[sid] = name
    parents = link(digests, producers)
    return parents, {p["snapshot"]: names[p["snapshot"]] for p in parents if "snapshot" in p}


# -- the graph that led to a snapshot -------------------------------------------------------


@dataclass(frozen=True)
class Graph:
    """The snapshots whose values led to ``root`` (itself included), and the values between.

    nodes  id -> {"id", "name", "status", "created", "inputs": [names], "notebook": [{"input",
           "digest"}]} (inputs in the order of its --in, those from the notebook), or
           {"id", "missing": True} for a parent since removed
    edges  {"from": parent, "to": child, "output": name there, "input": name here, "digest"}
    """

    root: str
    nodes: Mapping[str, dict]
    edges: tuple[dict, ...]


def graph_of(root: str, records: Mapping[str, Mapping]) -> Graph:
    """The graph of ``root`` from the records it needs (id -> record; a parent absent from
    ``records`` is a missing node). Pure."""
    nodes: dict[str, dict] = {}
    edges: list[dict] = []
    todo = [root]
    while todo:
        sid = todo.pop()
        if sid in nodes:
            continue
        record = records.get(sid)
        if record is None:
            nodes[sid] = {"id": sid, "missing": True}
            continue
        nodes[sid] = _node(record)
        for entry in _parents(record):
            parent = entry.get("snapshot")
            if not isinstance(parent, str):
                continue
            edges.append(
                {
                    "from": parent,
                    "to": sid,
                    "output": entry.get("output"),
                    "input": entry.get("input"),
                    "digest": entry.get("digest"),
                }
            )
            todo.append(parent)
    return Graph(root, nodes, tuple(edges))


def _node(record: Mapping) -> dict:
    return {
        "id": record["id"],
        "name": record.get("name"),
        "status": record.get("status"),
        "created": record.get("created"),
        "inputs": [p.get("input") for p in _parents(record)],  # in the order of its --in
        "notebook": [
            {"input": p.get("input"), "digest": p.get("digest")}
            for p in _parents(record)
            if p.get("from") == NOTEBOOK
        ],
    }


def graph(store, ref: str) -> Graph:
    """The graph that led to the snapshot ``ref`` (an id, prefix or name): its records read
    one by one through their ``parents``. Raises SnapshotNotFound for an unknown ``ref``."""
    first = store.get(ref)
    records: dict[str, Mapping] = {first["id"]: first}
    todo = parent_ids(first)
    while todo:
        sid = todo.pop()
        if sid in records:
            continue
        try:
            records[sid] = record = store.get(sid)
        except SnapshotNotFound:
            continue  # removed since: a missing node
        todo.extend(parent_ids(record))
    return graph_of(first["id"], records)


def steps(g: Graph) -> list[str]:
    """The graph's snapshots in an order they can run in: every parent before its children,
    and among those ready, the one created first. What a pipeline re-run walks."""
    waiting = {sid: {e["from"] for e in g.edges if e["to"] == sid} for sid in g.nodes}
    order: list[str] = []
    while waiting:
        ready = [sid for sid, before in waiting.items() if not before - set(order)]
        if not ready:  # a cycle cannot come from runs in time order; never loop on one
            ready = list(waiting)
        first = min(ready, key=lambda sid: (_created(g.nodes[sid]), sid))
        order.append(first)
        del waiting[first]
    return order


def _created(node: Mapping) -> float:
    value = node.get("created")
    return float(value) if isinstance(value, (int, float)) else float("-inf")


def lineage_json(g: Graph) -> dict:
    """The graph as JSON: its steps in order (each node with its ``step`` number), the edges."""
    order = steps(g)
    return {
        "snapshot": g.root,
        "steps": order,
        "nodes": [dict(g.nodes[sid], step=i) for i, sid in enumerate(order, 1)],
        "edges": [dict(e) for e in g.edges],
    }


def format_lineage(g: Graph) -> str:
    """The steps in order, each with the values it took: from which step, or the notebook::

    3 steps led to c3c3c3c3c3c3 (translate)
    1  a1b2c3d4e5f6  ocr        done
         image ← notebook  xxh3-128:1234abcd5678
    2  b2b2b2b2b2b2  detect     done
         text ← 1 ocr: text
    """
    order = steps(g)
    number = {sid: i for i, sid in enumerate(order, 1)}
    label = {sid: _label(g.nodes[sid]) for sid in order}
    root = g.nodes[g.root]
    named = f" ({root['name']})" if root.get("name") else ""
    count = f"{len(order)} step{'s' * (len(order) != 1)}"
    lines = [f"{count} led to {g.root}{named}"]
    width = max(len(label[sid]) for sid in order)
    for sid in order:
        node = g.nodes[sid]
        status = "removed" if node.get("missing") else (node.get("status") or MISSING)
        lines.append(f"{number[sid]:<2} {sid}  {label[sid]:<{width}}  {status}".rstrip())
        values = [
            (e["input"], f"{number[e['from']]} {label[e['from']]}: {e['output']}")
            for e in g.edges
            if e["to"] == sid
        ] + [
            (n["input"], f"{NOTEBOOK}  {short_digest(n['digest'])}")
            for n in node.get("notebook", ())
        ]
        place = {name: i for i, name in enumerate(node.get("inputs", ()))}
        values.sort(key=lambda pair: (place.get(pair[0], len(place)), str(pair[0])))
        lines.extend(f"     {name} ← {source}" for name, source in values)
    return "\n".join(lines)


def _label(node: Mapping) -> str:
    return str(node.get("name") or MISSING)


def sources(parents: Iterable[Mapping], names: Mapping[str, str | None]) -> tuple[list, list]:
    """([(snapshot, its name)], [notebook input names]) of a run's parents, each once: what a
    status display says a run consumed."""
    snapshots: list[tuple[str, str | None]] = []
    notebook: list[str] = []
    for p in parents:
        sid = p.get("snapshot")
        if isinstance(sid, str):
            if sid not in (s for s, _ in snapshots):
                snapshots.append((sid, names.get(sid)))
        elif p.get("from") == NOTEBOOK:
            notebook.append(str(p.get("input")))
    return snapshots, notebook


def children_json(root: str, children: Iterable[Mapping]) -> dict:
    """The snapshots that took values from ``root`` (their full records, as Store.children
    lists them), as nodes and edges of lineage_json's shapes: what a view of ``root`` shows
    after it. Pure."""
    nodes: list[dict] = []
    edges: list[dict] = []
    for record in children:
        nodes.append(_node(record))
        edges.extend(
            {
                "from": root,
                "to": record["id"],
                "output": entry.get("output"),
                "input": entry.get("input"),
                "digest": entry.get("digest"),
            }
            for entry in _parents(record)
            if entry.get("snapshot") == root
        )
    return {"children": nodes, "child_edges": edges}
