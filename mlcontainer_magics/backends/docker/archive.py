"""Tar archives for moving files into and out of containers (no host mounts needed)."""

from __future__ import annotations

import io
import tarfile


def tar_bytes(
    files: dict[str, bytes], *, root: str = "", uid: int = 0, gid: int = 0, mode: int = 0o644
) -> bytes:
    """A tar of ``files`` (relative path -> content), all owned by uid:gid, under ``root``/."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = {root} if root else set()
        for path in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(filter(None, [root, *parts[:i]])))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, gid
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo("/".join(filter(None, [root, path])))
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def untar_files(chunks, strip: int = 1) -> dict[str, bytes]:
    """Regular files of a tar stream (an iterable of byte chunks), first ``strip`` parts removed."""
    buf = io.BytesIO(b"".join(chunks))
    out = {}
    with tarfile.open(fileobj=buf, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = member.name.split("/")
            # A lone file's archive holds just its name: keep that rather than strip it away.
            name = "/".join(parts[strip:]) if len(parts) > strip else parts[-1]
            f = tar.extractfile(member)
            if name and f is not None:
                out[name] = f.read()
    return out
