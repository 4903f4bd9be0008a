"""The Kubernetes backend: environments built with Docker and pushed, runs as Jobs.

``backend`` (KubernetesBackend, the one boundary for the client's ApiException), ``objects`` and
``slugs`` (pure: manifests as dicts, DNS-safe names), ``registry`` (pushing images),
``export`` (job.yaml for an exported snapshot).
"""
