"""The snapshot verbs shared by the ``%container`` line magic and the ``mlcontainer`` CLI.

Each verb takes a :class:`~mlcontainer_magics.core.store.Store` and returns the text to print; the
``format_*`` functions are pure (records in, text out), so they are tested without a store.
Errors are :class:`~mlcontainer_magics.errors.StoreError` with a message for the user.
"""

from __future__ import annotations

import json
import textwrap

from ..errors import SnapshotActive, SnapshotNotFound, StoreError
from . import lineage
from .formatting import (
    MISSING,
    as_number,
    format_duration,
    format_size,
    format_time,
    short_digest,
)
from .store import ACTIVE_STATUSES, STATUSES

# format_duration/_time/_size come from .formatting with their defaults, the CLI's style:
# durations and times in one word ("4m05s"), "-" when unknown, so `list` stays awk-friendly.
_STATUS_WIDTH = max(len(s) for s in STATUSES)
_LABEL = 11  # width of the labels in `show`
_WRAP = 100


# -- small pure helpers ---------------------------------------------------------------------


def _printable(value) -> str:
    """``value`` on one line: control characters and line breaks become ``?``."""
    if value is None:
        return ""
    return "".join(c if c.isprintable() or c == " " else "?" for c in str(value)).strip()


def _word(value) -> str:
    """A value as one whitespace-free word, for columns that `awk` splits."""
    return "_".join(_printable(value).split()) or MISSING


# -- list ----------------------------------------------------------------------------------------


def format_list(summaries) -> str:
    """One line per snapshot: id, name, status, duration, created, notebook.

    Every column but the last (notebook) is one word, with ``-`` for a missing value, so
    ``awk '{print $1}'`` gives the ids; columns are padded to line up. No header, no footer:
    an empty list is an empty string.
    """
    rows = [
        (
            _word(s.get("id")),
            _word(s.get("name")),
            _word(s.get("status")),
            format_duration(s.get("duration")),
            format_time(s.get("created")),
            _printable(s.get("notebook")) or MISSING,
        )
        for s in summaries
    ]
    if not rows:
        return ""
    id_w = max(len(r[0]) for r in rows)
    name_w = max(len(r[1]) for r in rows)
    status_w = max(_STATUS_WIDTH, *(len(r[2]) for r in rows))
    dur_w = max(len(r[3]) for r in rows)
    return "\n".join(
        f"{i:<{id_w}}  {n:<{name_w}}  {st:<{status_w}}  {d:>{dur_w}}  {c}  {nb}".rstrip()
        for i, n, st, d, c, nb in rows
    )


def list_snapshots(
    store, *, limit=50, notebook=None, name=None, as_json=False, offset=0, status=None
) -> str:
    """The newest ``limit`` snapshots as text lines (see ``format_list``) or a JSON array."""
    summaries = store.list(limit=limit, offset=offset, notebook=notebook, name=name, status=status)
    if as_json:
        return json.dumps(summaries, indent=2)
    return format_list(summaries)


# -- services ------------------------------------------------------------------------------------


def format_services(rows) -> str:
    """A table of services (core.services.rows): name, URL, snapshot, requests, uptime; a
    service of another process has no request count here ("-")."""
    if not rows:
        return ""
    table = [("NAME", "URL", "SNAPSHOT", "REQUESTS", "UPTIME")] + [
        (
            _word(r.get("name")),
            _word(r.get("url")),
            _word(r.get("snapshot")),
            MISSING if r.get("requests") is None else str(r["requests"]),
            format_duration(r.get("uptime")),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    return "\n".join(
        "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip() for row in table
    )


# -- show ----------------------------------------------------------------------------------------


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _items(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _field(label: str, text: str) -> str:
    lines = str(text).splitlines() or [""]
    pad = " " * (_LABEL + 1)
    return "\n".join(
        [f"{label:<{_LABEL}} {lines[0]}".rstrip()] + [(pad + line).rstrip() for line in lines[1:]]
    )


def _wrapped(words, sep: str = ", ", indent: int = _LABEL + 1) -> str:
    """Words joined by ``sep``, wrapped to the screen; continuation lines are left to _field."""
    text = sep.join(str(w) for w in words)
    return (
        "\n".join(
            textwrap.wrap(text, _WRAP - indent, break_long_words=False, break_on_hyphens=False)
        )
        or MISSING
    )


def _pin(entry) -> str:
    if isinstance(entry, dict):
        name, version = entry.get("name"), entry.get("version")
        if name is None:
            return json.dumps(entry, sort_keys=True, default=str)
        return f"{name}=={version}" if version not in (None, "") else str(name)
    return str(entry)


def _status_line(record: dict) -> str:
    status = record.get("status") or "unknown"
    parts = [str(status)]
    if record.get("exit_code") is not None:
        parts.append(f"exit {record['exit_code']}")
    text = ", ".join(parts)
    if record.get("reason"):
        text += f" ({record['reason']})"
    return text


def _resources(resources: dict) -> str:
    parts = []
    for key, value in resources.items():
        if value is None or value == "" or value == ():
            continue
        if key == "memory" and as_number(value) is not None:
            value = format_size(value, binary=True)
        elif key == "timeout" and as_number(value) is not None:
            value = format_duration(value)
        parts.append(f"{key} {value}")
    return ", ".join(parts)


def _files(files) -> list[str]:
    out = []
    for name, meta in _dict(files).items():
        meta = _dict(meta)
        bits = [str(meta[k]) for k in ("format",) if meta.get(k)]
        if meta.get("size") is not None:
            bits.append(format_size(meta["size"]))
        if meta.get("digest"):
            bits.append(short_digest(meta["digest"]))
        out.append(f"{name}: {', '.join(bits)}" if bits else str(name))
    return out


def format_where(record: dict) -> str:
    """Where a snapshot ran: ``docker``, or ``kubernetes (context kind-dev, namespace ml)``;
    records older than the field ran on Docker."""
    target = _dict(record.get("target"))
    bits = [
        f"{k} {_printable(v)}"
        for k, v in sorted(target.items())
        if isinstance(v, str) and v and k != "engine"
    ]
    name = _printable(record.get("backend")) or "docker"
    return f"{name} ({', '.join(bits)})" if bits else name


def format_record(record: dict, children=(), names: dict | None = None) -> str:
    """A readable multi-line summary of one snapshot record; tolerant of missing fields.
    ``children``: summaries of the snapshots that took its values (Store.children);
    ``names``: snapshot id -> name, for its parents."""
    r = _dict(record)
    spec = _dict(r.get("spec"))
    env_spec = _dict(spec.get("env_spec"))
    lines = (
        _run_lines(r)
        + _image_lines(r, env_spec)
        + _spec_lines(r, spec, env_spec)
        + _data_lines(r, spec)
        + _map_lines(r)
        + _lineage_lines(r, children, names or {})
        + _provenance_lines(r)
        + _code_lines(r, spec)
    )
    return "\n".join(lines)


def _run_lines(r: dict) -> list[str]:
    """Which run: id, name, status, where it ran, when."""
    lines = [_field("snapshot", r.get("id", MISSING))]
    if r.get("name"):
        lines.append(_field("name", r["name"]))
    lines.append(_field("status", _status_line(r)))
    if r.get("backend"):
        lines.append(_field("ran on", format_where(r)))
    if r.get("notebook") or r.get("cell") is not None:
        where = str(r.get("notebook") or MISSING)
        if r.get("cell") is not None:
            where += f", cell {r['cell']}"
        lines.append(_field("notebook", where))
    if r.get("session"):
        lines.append(_field("session", r["session"]))
    service = _dict(r.get("service"))
    if service:
        copies = service.get("replicas") or 1
        lines.append(
            _field(
                "service",
                f"{_printable(service.get('name'))} at {_printable(service.get('url'))} "
                f"(entry {_printable(service.get('entry'))}"
                + (f", {copies} replicas" if copies != 1 else "")
                + ")",
            )
        )
    if r.get("replaced_by"):
        lines.append(_field("replaced by", r["replaced_by"]))
    lines.append(_field("created", format_time(r.get("created"))))
    if r.get("finished") is not None or r.get("duration") is not None:
        lines.append(
            _field(
                "finished",
                f"{format_time(r.get('finished'))} (ran {format_duration(r.get('duration'))})",
            )
        )
    return lines


def _image_lines(r: dict, env_spec: dict) -> list[str]:
    lines = []
    image = r.get("env_image")
    if image or r.get("env_image_id") or r.get("image_size") is not None:
        bits = [str(image or MISSING)]
        if r.get("env_image_id"):
            bits.append(short_digest(r["env_image_id"]))
        if r.get("image_size") is not None:
            bits.append(format_size(r["image_size"]))
        lines.append(_field("image", "  ".join(bits)))
    base = r.get("base_image") or env_spec.get("base_image")
    if base or r.get("base_image_id"):
        bits = [str(base or MISSING)]
        if r.get("base_image_id"):
            bits.append(short_digest(r["base_image_id"]))
        lines.append(_field("base", "  ".join(bits)))
    return lines


def _spec_lines(r: dict, spec: dict, env_spec: dict) -> list[str]:
    """What it asked for: requirements, apt, resources, env, values, the lock."""
    lines = []
    requirements = _items(
        r.get("requirements") if r.get("requirements") is not None else env_spec.get("requirements")
    )
    if requirements:
        lines.append(_field("requires", _wrapped(requirements, "  ")))
    if _items(env_spec.get("apt")):
        lines.append(_field("apt", _wrapped(_items(env_spec["apt"]), "  ")))
    resources = dict(_dict(r.get("resources")))
    if not resources:
        resources = {
            k: spec.get(k)
            for k in ("cpus", "memory", "gpus", "network", "timeout")
            if spec.get(k) is not None
        }
    if _resources(resources):
        lines.append(_field("resources", _wrapped([_resources(resources)])))
    # Only the recorded env, whose secrets are masked; never the spec's.
    env = _dict(r.get("env"))
    if env:
        lines.append(_field("env", _wrapped(f"{k}={v}" for k, v in env.items())))
    for key in ("inputs", "outputs"):
        files = _files(r.get(key))
        if files:
            lines.append(_field(key, "\n".join(files)))
        elif _items(spec.get(key)):
            lines.append(_field(key, _wrapped(_items(spec[key]))))
    captured = _items(r.get("captured"))
    if captured:
        lines.append(_field("captured", _wrapped((_pin(p) for p in captured), "  ")))
    lock = _items(r.get("lock"))
    if lock:
        lines.append(
            _field(
                "lock",
                f"{len(lock)} package{'s' * (len(lock) != 1)}\n"
                + _wrapped((_pin(p) for p in lock), "  "),
            )
        )
    return lines


def _data_lines(r: dict, spec: dict) -> list[str]:
    """Mounted data (with digests), files the cell wrote, and the secrets it was given."""
    lines = []
    mounts = [
        f"{_printable(m.get('target'))}  {m.get('mode')}  {format_size(m.get('size'))}, "
        f"{m.get('count')} file{'s' * (m.get('count') != 1)}  {short_digest(m.get('digest'))}"
        for m in _items(r.get("mounts"))
        if isinstance(m, dict)
    ]
    if mounts:
        lines.append(_field("data in", "\n".join(mounts)))
    written = [
        f"{_printable(target)}/{_printable(path)}  {format_size(entry[0])}"
        for target, files in sorted(_dict(r.get("written")).items())
        for path, entry in sorted(_dict(files).items())
        if isinstance(entry, (list, tuple)) and entry
    ]
    if written:
        more = [f"and {len(written) - 20} more"] if len(written) > 20 else []
        lines.append(_field("data out", "\n".join(written[:20] + more)))
    if _items(spec.get("secrets")):
        lines.append(_field("secrets", _wrapped(_items(spec["secrets"]))))
    return lines


def _map_lines(r: dict) -> list[str]:
    """A map's items, compactly: how many ended how, one word per item (``3:done 1.2s``), and
    the failed ones' last traceback line."""
    block = _dict(r.get("map"))
    if not block:
        return []
    items = [i for i in _items(block.get("items")) if isinstance(i, dict)]
    counts: dict = {}
    for item in items:
        counts[item.get("reason")] = counts.get(item.get("reason"), 0) + 1
    how = ", ".join(f"{n} {_printable(reason)}" for reason, n in counts.items())
    settings = [f"--parallel {block['parallel']}" if block.get("parallel") else ""]
    settings.append(f"--retries {block['retries']}" if block.get("retries") else "")
    extra = ", ".join(x for x in settings if x)
    lines = [
        _field(
            "map",
            f"{_printable(block.get('name'))}: {block.get('count', len(items))} items"
            + (f" ({extra})" if extra else "")
            + (f"; {how}" if how else ""),
        )
    ]
    words = []
    for item in items:
        took = format_duration(item.get("duration"))
        word = f"{item.get('index')}:{_word(item.get('reason'))} {took}"
        if (item.get("attempts") or 1) > 1:
            word += f" x{item['attempts']}"
        words.append(word)
    if words:
        lines.append(_field("items", _wrapped(words, "  ")))
    failed = [
        f"{item.get('index')}: {_printable(_last_line(item.get('error')) or item.get('reason'))}"
        for item in items
        if item.get("reason") != "done"
    ]
    if failed:
        more = [f"and {len(failed) - 10} more"] if len(failed) > 10 else []
        lines.append(_field("failed", "\n".join(failed[:10] + more)))
    return lines


def _last_line(text) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[-1] if lines else ""


def _lineage_lines(r: dict, children, names: dict) -> list[str]:
    """Where its --in values came from (a snapshot's output, or the notebook), and which
    snapshots took its values."""
    lines = []
    parents = []
    for p in _items(r.get("parents")):
        if not isinstance(p, dict):
            continue
        if p.get("snapshot"):
            sid = p["snapshot"]
            name = f" ({names[sid]})" if names.get(sid) else ""
            parents.append(f"{p.get('input')} ← {sid}{name}: {p.get('output')}")
        else:
            parents.append(f"{p.get('input')} ← notebook  {short_digest(p.get('digest'))}")
    if parents:
        lines.append(_field("parents", "\n".join(parents)))
    kids = [f"{c['id']} ({c['name']})" if c.get("name") else c["id"] for c in children]
    if kids:
        lines.append(_field("children", _wrapped(kids)))
    return lines


def _provenance_lines(r: dict) -> list[str]:
    """How long it took, and on what host with which tools."""
    lines = []
    timings = _dict(r.get("timings"))
    if timings:
        parts = [f"{phase} {format_duration(sec)}" for phase, sec in timings.items()]
        total = sum(as_number(s) or 0.0 for s in timings.values())
        if len(timings) > 1:
            parts.append(f"total {format_duration(total)}")
        lines.append(_field("timings", _wrapped(parts)))
    host = r.get("host")
    if isinstance(host, dict) and host:
        bits = [str(host[k]) for k in ("hostname", "platform") if host.get(k)]
        bits += [f"{k} {host[k]}" for k in ("python", "docker") if host.get(k)]
        bits += [
            f"{k} {v}"
            for k, v in host.items()
            if k not in ("hostname", "platform", "python", "docker") and v
        ]
        lines.append(_field("host", _wrapped(bits)))
    elif host:
        lines.append(_field("host", str(host)))
    versions = r.get("versions")
    if isinstance(versions, dict) and versions:
        lines.append(_field("versions", _wrapped(f"{k} {v}" for k, v in versions.items())))
    return lines


def _code_lines(r: dict, spec: dict) -> list[str]:
    lines = []
    code = r.get("code") if r.get("code") is not None else spec.get("code")
    if isinstance(code, str) and code.strip():
        body = code.rstrip("\n").splitlines()
        lines.append(f"code ({len(body)} line{'s' * (len(body) != 1)})")
        lines.extend(("    " + line).rstrip() for line in body)
    return lines


def show(store, ref, as_json=False) -> str:
    """One snapshot in full: readable text, or its whole record as JSON."""
    record = store.get(ref)
    if as_json:
        return json.dumps(record, indent=2, sort_keys=True)
    names = {}
    for sid in lineage.parent_ids(record):
        try:
            names[sid] = store.get(sid).get("name")
        except SnapshotNotFound:
            names[sid] = "removed"
    return format_record(record, store.children(record["id"]), names)


def show_lineage(store, ref, as_json=False) -> str:
    """The snapshots whose values led to ``ref``, in order: text, or nodes and edges as JSON."""
    g = lineage.graph(store, ref)
    if as_json:
        return json.dumps(lineage.lineage_json(g), indent=2)
    return lineage.format_lineage(g)


# -- logs and rm --------------------------------------------------------------------------------


def format_logs(record: dict) -> str:
    """The recorded stdout, then stderr (the order within each is kept, not across them)."""
    out = str(record.get("stdout") or "")
    err = str(record.get("stderr") or "")
    if out and err and not out.endswith("\n"):
        out += "\n"
    return out + err


def logs(store, ref) -> str:
    return format_logs(store.get(ref))


def check_removable(record: dict, force: bool = False) -> None:
    """The one rule: a snapshot still building or running is kept unless ``force``."""
    if record.get("status") in ACTIVE_STATUSES and not force:
        raise SnapshotActive(
            f"Snapshot {record['id']} is still {record['status']}; stop it "
            "first, or force the removal (--force) if its kernel is gone."
        )


def remove_one(store, ref: str, *, force: bool = False) -> dict:
    """Remove one snapshot (record and files); the removed record."""
    record = store.get(ref)
    check_removable(record, force)
    return store.remove(record["id"])


def rm(store, refs, *, force: bool = False) -> str:
    """Remove snapshots (records and files). Every ref is resolved first, so a typo removes
    nothing. Running or building snapshots are kept unless ``force``."""
    if isinstance(refs, str):
        refs = [refs]
    records: dict[str, dict] = {}
    problems: list[str] = []
    for ref in refs:
        try:
            record = store.get(ref)
            check_removable(record, force)
        except StoreError as e:
            problems.append(str(e))
            continue
        records.setdefault(record["id"], record)
    if problems:
        raise StoreError("\n".join(problems) + "\nNothing was removed.")
    if not records:
        raise StoreError("Name at least one snapshot to remove.")
    lines = []
    for sid, record in records.items():
        store.remove(sid)
        lines.append(f"removed {sid}" + (f" ({record['name']})" if record.get("name") else ""))
    return "\n".join(lines)
