"""The Docker backend: environments built by install-and-commit, runs as fresh containers.

``backend`` (DockerBackend), ``engine`` (connecting; the one boundary for Docker SDK errors),
``build`` (pure: build scripts, pip.conf, the export Dockerfile), ``pipconfig`` (the host's pip
settings), ``archive`` (tar in and out of containers), ``sessions`` (warm sessions).
"""
