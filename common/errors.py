"""Exception hierarchy.

Every message here may travel from a site to the server, so messages must never hold
a path, a DICOM tag value or a per-image value. Name files by :func:`common.redact.file_token`.
"""


class ImplantFLError(Exception):
    """Root of every error ImplantFL raises on purpose."""


class InvalidInputError(ImplantFLError, ValueError):
    """A file, folder or value given by a user is not usable."""


class ConfigError(InvalidInputError):
    """A run, site or server configuration is invalid; raised before any work starts."""


class CatalogError(InvalidInputError):
    """The label catalog is malformed or a label is not in it."""


class UnreadableImageError(InvalidInputError):
    """An image file could not be decoded (corrupt, truncated, no pixel data...)."""


class PrivacyBudgetExceededError(ImplantFLError):
    """A site's privacy budget would be exceeded by the requested training."""


class PrivacyPolicyError(ImplantFLError):
    """The run asks for weaker privacy settings than the site policy allows."""
