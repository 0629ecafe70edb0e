"""User-facing errors.

Anything a user can get wrong (a path, a genotype, a task name, a corrupt image, a bundle)
raises a subclass of :class:`HblError` with a one-line message that says what to do. The CLI
turns these into that line on stderr and exit code 2; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations


class HblError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class GenotypeError(HblError):
    """A genotype file or name is malformed or unknown."""


class DataError(HblError):
    """A dataset path, layout or pairing problem."""


class ImageLoadError(DataError):
    """An image file is missing, corrupt or of an unsupported kind."""


class LossSpecError(HblError):
    """A loss specification names an unknown term, a bad weight or a missing weight file."""


class BundleError(HblError):
    """A model bundle is missing, incomplete or of an unknown format."""


class ConfigError(HblError):
    """A command-line option or a config value is invalid."""
