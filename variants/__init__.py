"""The built-in attention variants, one module per family.

Importing this package registers every implementation with ``attnbench.registry``. A new family
module is added here; a user's own variants need no change here (``--plugins FILE.py`` or the
``attnbench.variants`` entry-point group).
"""

from . import fused, linear, naive, sliding_window, sparse  # noqa: F401
