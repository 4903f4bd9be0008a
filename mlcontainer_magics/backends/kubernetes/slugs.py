"""DNS-safe Kubernetes names from one helper.

Pure and standard library only. :func:`safe_name` returns its input unchanged when the input
is already valid for the requested kind and fits; otherwise it returns a sanitized, truncated
form followed by ``---`` and a short hash of the *original* input. Because a name is only
returned verbatim when it contains no ``--``, and every hashed name contains ``---``, a hashed
name can never collide with a verbatim one, and two different inputs map to two different
names (up to a collision of the 8-hex-digit hash).

Kinds (https://kubernetes.io/docs/concepts/overview/working-with-objects/names/):

``dns-label``
    RFC 1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a
    letter or digit. Jobs (whose name becomes a label value on their pods), Secrets, Pods and
    namespaces use this.
``dns-subdomain``
    RFC 1123 subdomain: at most 253 characters, labels as above joined with '.'.
``label-value``
    A label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a
    letter or digit (or empty).
"""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
HASH_LENGTH = 8
_SEPARATOR = "---"

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# What survives sanitizing, per kind; every other run of characters becomes one '-'.
_UNSAFE = {
    "dns-label": re.compile(r"[^a-z0-9]+"),
    "dns-subdomain": re.compile(r"[^a-z0-9.]+"),
    "label-value": re.compile(r"[^a-z0-9._]+"),
}
_MAX = {
    "dns-label": DNS_LABEL_MAX,
    "dns-subdomain": DNS_SUBDOMAIN_MAX,
    "label-value": LABEL_VALUE_MAX,
}


def is_dns_label(s: str) -> bool:
    return len(s) <= DNS_LABEL_MAX and bool(_DNS_LABEL_RE.match(s))


def is_dns_subdomain(s: str) -> bool:
    return (
        len(s) <= DNS_SUBDOMAIN_MAX
        and bool(_DNS_SUBDOMAIN_RE.match(s))
        and all(len(part) <= DNS_LABEL_MAX for part in s.split("."))
    )


def is_label_value(s: str) -> bool:
    return s == "" or (len(s) <= LABEL_VALUE_MAX and bool(_LABEL_VALUE_RE.match(s)))


_VALID = {
    "dns-label": is_dns_label,
    "dns-subdomain": is_dns_subdomain,
    "label-value": is_label_value,
}


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def safe_name(name: str, kind: str = "dns-label", max_length: int | None = None) -> str:
    """Return ``name`` if it is a valid ``kind`` no longer than ``max_length``, else a safe,
    unique stand-in ``<sanitized prefix>---<hash of name>``."""
    if kind not in _VALID:
        raise ValueError(f"kind must be one of {', '.join(_VALID)}, not {kind!r}")
    limit = min(max_length or _MAX[kind], _MAX[kind])
    room = limit - len(_SEPARATOR) - HASH_LENGTH
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a name and its hash")
    if _VALID[kind](name) and len(name) <= limit and "--" not in name:
        return name
    prefix = _UNSAFE[kind].sub("-", name.lower())
    if kind == "dns-subdomain":  # no empty labels, and no label may start or end with '-'
        prefix = re.sub(r"-*\.[-.]*", ".", prefix)
    prefix = re.sub(r"-{2,}", "-", prefix)
    prefix = prefix.strip("-._")[:room].rstrip("-._") or "x"
    if kind == "dns-subdomain":  # each dot-separated label, the hashed last one too, <= 63
        parts = [p[:DNS_LABEL_MAX].strip("-") for p in prefix.split(".")]
        parts[-1] = parts[-1][: DNS_LABEL_MAX - len(_SEPARATOR) - HASH_LENGTH].rstrip("-") or "x"
        prefix = ".".join(p for p in parts if p)
    return f"{prefix}{_SEPARATOR}{short_hash(name)}"
