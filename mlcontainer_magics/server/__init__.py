"""The jupyter_server extension behind the JupyterLab sidebar: a REST API under ``/mlcontainer/``.

Thin: every route reads the snapshot store or asks a backend through its contract. The domain
objects live in ``web_app.settings`` (set here only where absent), so tests and other
deployments can put their own in before the extension loads. Settings are MlcontainerSettings
under the ServerApp: Jupyter's config files reach them (``c.MlcontainerSettings.namespace``).
"""

from __future__ import annotations

from . import actions
from .handlers import ACTIONS, setup_handlers

__all__ = ["ACTIONS", "setup_handlers"]


def _load_jupyter_server_extension(server_app):
    """Register the REST handlers; called by jupyter_server for the enabled extension."""
    from ..backends import Backends
    from ..config import MlcontainerSettings

    settings = server_app.web_app.settings
    mlc = settings.setdefault("mlcontainer_settings", MlcontainerSettings(parent=server_app))
    if "mlcontainer_store" not in settings:
        from ..core.store import Store

        settings["mlcontainer_store"] = Store(mlc.store_dir)
    backends = settings.setdefault("mlcontainer_backends", Backends(mlc))
    settings.setdefault("mlcontainer_namespace", mlc.namespace)
    settings.setdefault("mlcontainer_root_dir", getattr(server_app, "root_dir", None))
    settings.setdefault(
        "mlcontainer_actions",
        dict(
            ACTIONS,
            rerun=actions.rerun_on(backends),
            export=actions.export_under(settings["mlcontainer_root_dir"], backends),
        ),
    )
    setup_handlers(server_app.web_app)
    root = getattr(settings["mlcontainer_store"], "root", None)
    server_app.log.info(
        "mlcontainer_magics server extension: API at /mlcontainer/, store %s",
        root if root is not None else "(default)",
    )
