"""Code shared by every ImplantFL role: config, catalog, models, weights, metrics.

``common`` never imports ``client``, ``server`` or ``simulations`` (a test enforces it).
"""

__version__ = "0.1.0"
