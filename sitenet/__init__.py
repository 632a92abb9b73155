"""SiteNet-DIM: Site-Net with Deep InfoMax pretraining. The core: CIF -> validated structure -> features ->
batches, plus the model definitions (``sitenet.model``, which alone needs torch and is never imported here)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sitenet-dim")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.1.0"
