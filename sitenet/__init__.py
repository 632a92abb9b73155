"""SiteNet-DIM: Site-Net with Deep InfoMax pretraining. The core: CIF -> validated structure -> features ->
batches, plus the model definitions (``sitenet.model``, which alone needs torch and is never imported here).

``sitenet.load_model(...)`` is the Python API (``sitenet.api``); it is imported on first use, so
``import sitenet`` stays instant.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sitenet-dim")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.1.0"


__all__ = ["__version__", "load_model", "SiteNetModel"]


def __getattr__(name: str):
    if name in ("load_model", "SiteNetModel"):
        from sitenet import api

        return getattr(api, name)
    raise AttributeError(f"module 'sitenet' has no attribute {name!r}")
