"""The jupyter_server extension behind the JupyterLab sidebar: a REST API under ``/mlcontainer/``.

Thin: every route reads the snapshot store or asks the Docker engine, nothing more. The domain
objects live in ``web_app.settings`` (set here only where absent), so tests and other
deployments can put their own in before the extension loads.
"""
from __future__ import annotations

from . import actions
from .handlers import ACTIONS, Engine, setup_handlers

__all__ = ["ACTIONS", "Engine", "setup_handlers"]


def _load_jupyter_server_extension(server_app):
    """Register the REST handlers; called by jupyter_server for the enabled extension."""
    settings = server_app.web_app.settings
    if "mlcontainer_store" not in settings:
        from ..core.store import Store

        settings["mlcontainer_store"] = Store()
    settings.setdefault("mlcontainer_engine", Engine())
    if "mlcontainer_namespace" not in settings:
        from ..frontends.magics import ContainerizeMagics

        settings["mlcontainer_namespace"] = ContainerizeMagics(shell=None).namespace
    settings.setdefault("mlcontainer_root_dir", getattr(server_app, "root_dir", None))
    settings.setdefault("mlcontainer_actions", dict(
        ACTIONS, rerun=actions.rerun,
        export=actions.export_under(settings["mlcontainer_root_dir"])))
    setup_handlers(server_app.web_app)
    root = getattr(settings["mlcontainer_store"], "root", None)
    server_app.log.info("mlcontainer_magics server extension: API at /mlcontainer/, store %s",
                        root if root is not None else "(default)")
