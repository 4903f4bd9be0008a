"""mlcontainer-magics: run notebook cells in Docker containers, keep every run as a snapshot."""

from ._version import __version__

__all__ = ["__version__", "load_ipython_extension", "service", "unload_ipython_extension"]


def __getattr__(name):
    # `service` is imported when first used, so `%load_ext` does not pay for the client.
    if name == "service":
        from .client import service

        return service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_ipython_extension(ipython):
    from .frontends.magics import ContainerizeMagics

    ipython.register_magics(ContainerizeMagics(ipython))


def unload_ipython_extension(ipython):
    # Magics stay registered until the kernel ends; IPython has no unregister.
    pass


def _jupyter_server_extension_points():
    return [{"module": "mlcontainer_magics.server"}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "mlcontainer-magics"}]
