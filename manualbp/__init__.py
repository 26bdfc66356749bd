"""manualbp: backpropagation you can read, check and change.

``manualbp.functional`` holds ``torch.autograd.Function`` classes with hand-written backward passes,
``manualbp.nn`` the ``torch.nn``-compatible layers built on them, and ``manualbp.convert`` swaps the
layers of an existing torch model for manual ones.
"""

from manualbp import functional, nn
from manualbp.convert import convert

__all__ = ["convert", "functional", "nn"]
__version__ = "0.1.0"
