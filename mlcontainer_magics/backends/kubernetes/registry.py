"""Pushing environment images to a registry a cluster can pull from.

An image is pushed only when the registry does not already hold that exact image under the
tag: the engine asks the registry for the tag's manifest digest (``docker buildx imagetools``
does the same through the distribution API), and when that digest is one this engine already
recorded for this image (``RepoDigests``, kept by an earlier push or pull), nothing is sent.
Asking through the engine means its registry settings (insecure registries, certificates in
``/etc/docker/certs.d``, proxies) apply to the check exactly as to the push.

Docker SDK and engine errors become :class:`RegistryError` (wrong or missing credentials:
:class:`RegistryAuthError`; no engine: :class:`~mlcontainer_magics.errors.EngineUnavailable`)
here, at this one boundary.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ...errors import EngineUnavailable, MlcError, RegistryAuthError, RegistryError

# The reference grammar of distribution (reference/regexp.go), simplified to what we write.
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_AUTH_MARKERS = (
    "unauthorized",
    "authentication required",
    "denied",
    "forbidden",
    "incorrect username or password",
)
_NO_CREDENTIALS_MARKERS = ("no basic auth credentials",)
_ABSENT_MARKERS = ("manifest unknown", "name unknown", "not found")
_UNREACHABLE_MARKERS = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "server gave http response to https client",
    "tls:",
    "x509:",
    "network is unreachable",
    "dial tcp",
)

Log = Callable[[str], None]


def repository_ref(registry: str, repository: str) -> str:
    """``registry/repository``, checked: ``registry`` is ``host[:port]`` optionally followed by
    a path prefix (``ghcr.io/org``); ``repository`` is lowercase path components."""
    host, _, prefix = registry.strip().rstrip("/").partition("/")
    if not _HOST_RE.match(host) or ("." not in host and ":" not in host and host != "localhost"):
        raise RegistryError(
            f"Registry {registry!r} is not a registry host: use host[:port], "
            "for example registry.example.com or 127.0.0.1:5000."
        )
    path = "/".join(p for p in (prefix, repository.strip("/")) if p)
    for part in path.split("/"):
        if not _PATH_COMPONENT_RE.match(part):
            raise RegistryError(
                f"Repository {path!r} is not valid: use lowercase letters, "
                "digits and single '.', '_' or '-' between them, "
                "separated by '/'."
            )
    return f"{host}/{path}"


def push_image(
    client,
    image_ref_or_id: str,
    registry: str,
    repository: str,
    tag: str,
    auth: dict | None = None,
    log: Log | None = None,
) -> str:
    """Push a local image as ``registry/repository:tag`` unless the registry already has it.

    ``auth`` is a docker SDK ``auth_config`` (``{"username": ..., "password": ...}``); None
    uses the engine client's stored logins (``docker login``). ``log`` receives one line per
    step (not per progress tick). Returns the pushed reference by digest,
    ``registry/repository@sha256:...``, which a cluster pulls exactly. The local image keeps
    the ``registry/repository:tag`` tag, as after ``docker tag`` and ``docker push``.
    """
    import docker.errors  # imported here so that importing this module stays cheap

    log = log or (lambda line: None)
    repo = repository_ref(registry, repository)
    if not _TAG_RE.match(tag):
        raise RegistryError(
            f"Tag {tag!r} is not valid: use up to 128 letters, digits, '_', "
            "'.' and '-', not starting with '.' or '-'."
        )
    target = f"{repo}:{tag}"
    try:
        image = client.images.get(image_ref_or_id)
    except docker.errors.ImageNotFound:
        raise RegistryError(
            f"There is no image {image_ref_or_id!r} in the local engine to "
            "push; build the environment first."
        ) from None
    except _sdk_errors() as e:
        raise _translate(e, target, auth) from None

    remote = _remote_digest(client, target, auth)
    known = {
        d.partition("@")[2]
        for d in image.attrs.get("RepoDigests") or []
        if d.partition("@")[0] == repo
    }
    if remote is not None and remote in known:
        log(f"{target} already holds this image ({remote}); nothing to push.")
        return f"{repo}@{remote}"

    try:
        image.tag(repo, tag)
        log(f"Pushing {target} ...")
        stream = client.images.push(repo, tag=tag, auth_config=auth, stream=True, decode=True)
        digest, lines = _follow_push(stream, log)
    except _sdk_errors() as e:
        raise _translate(e, target, auth) from None
    except RegistryError as e:
        raise _translate_message(str(e), target, auth, log=e.log) from None
    if digest is None:
        # An engine that reports no digest: ask the registry for it.
        digest = _remote_digest(client, target, auth)
        if digest is None:
            raise RegistryError(
                f"Pushed {target}, but the registry does not list it afterwards.",
                log="\n".join(lines),
            )
    log(f"Pushed {repo}@{digest}")
    return f"{repo}@{digest}"


def _remote_digest(client, target: str, auth: dict | None) -> str | None:
    """The manifest digest the registry has under ``target``, or None when it has none."""
    import docker.errors

    try:
        data = client.images.get_registry_data(target, auth_config=auth)
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as e:
        message = _explanation(e)
        if any(m in message.lower() for m in _ABSENT_MARKERS) and e.status_code != 401:
            return None
        raise _translate(e, target, auth) from None
    except _sdk_errors() as e:
        raise _translate(e, target, auth) from None
    return data.id


def _follow_push(stream, log: Log) -> tuple[str | None, list[str]]:
    """Read the engine's push stream: log each layer once, raise on an error line."""
    digest = None
    lines: list[str] = []
    layer_states: dict[str, str] = {}
    for item in stream:
        if "error" in item or "errorDetail" in item:
            message = (item.get("errorDetail") or {}).get("message") or item.get("error", "")
            raise RegistryError(message, log="\n".join(lines))
        aux = item.get("aux") or {}
        if aux.get("Digest"):
            digest = aux["Digest"]
        status, layer = item.get("status"), item.get("id")
        if not status:
            continue
        if layer:
            if status in ("Pushed", "Layer already exists") or status.startswith("Mounted from"):
                layer_states[layer] = status
                lines.append(f"{layer}: {status}")
                log(f"  {layer}: {status}")
            continue
        lines.append(status)
        match = re.search(r"digest: (sha256:[0-9a-f]{64})", status)
        if match and digest is None:
            digest = match.group(1)
    pushed = sum(1 for s in layer_states.values() if s == "Pushed")
    if layer_states:
        log(f"{pushed} layer(s) uploaded, {len(layer_states) - pushed} already in the registry.")
    return digest, lines


def _explanation(e) -> str:
    return str(getattr(e, "explanation", None) or e)


def _sdk_errors() -> tuple[type[Exception], ...]:
    """What the docker SDK raises: its own errors, and requests' when the engine is gone."""
    import docker.errors
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def _translate(e, target: str, auth: dict | None) -> MlcError:
    import docker.errors

    if isinstance(e, docker.errors.APIError):
        if e.status_code == 401:
            return _auth_error(target, auth, _explanation(e))
        return _translate_message(_explanation(e), target, auth)
    if not isinstance(e, docker.errors.DockerException):  # requests: the engine went away
        return EngineUnavailable(
            f"The Docker engine stopped answering while pushing {target} "
            f"({type(e).__name__}); start it and try again."
        )
    return _translate_message(_explanation(e), target, auth)


def _translate_message(
    message: str, target: str, auth: dict | None, log: str = ""
) -> RegistryError:
    lower = message.lower()
    host = target.split("/", 1)[0]
    if any(m in lower for m in _NO_CREDENTIALS_MARKERS):
        return RegistryAuthError(
            f"The registry {host} asks for a login and none was given ({message}). Pass "
            f"credentials (a username and password or token), or run `docker login {host}`.",
            log=log,
        )
    if any(m in lower for m in _AUTH_MARKERS):
        return _auth_error(target, auth, message, log)
    if any(m in lower for m in _UNREACHABLE_MARKERS):
        return RegistryError(
            f"Cannot reach the registry {host} ({message}). Check the registry address, that "
            "it is running, and (for a registry without TLS) that the Docker engine lists it "
            "under insecure-registries.",
            log=log,
        )
    return RegistryError(f"Pushing {target} failed: {message}", log=log)


def _auth_error(target: str, auth: dict | None, message: str, log: str = "") -> RegistryAuthError:
    host = target.split("/", 1)[0]
    who = f"user {auth['username']!r}" if auth and auth.get("username") else "the stored login"
    return RegistryAuthError(
        f"The registry {host} refused {who} for {target} ({message}). Check the username and "
        "password (or token) and that the account may push to this repository.",
        log=log,
    )
