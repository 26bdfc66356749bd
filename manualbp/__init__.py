"""manualbp: backpropagation you can read, check and change.

``manualbp.functional`` holds ``torch.autograd.Function`` classes with hand-written backward passes,
``manualbp.nn`` the ``torch.nn``-compatible layers built on them, and ``manualbp.convert`` swaps the
layers of an existing torch model for manual ones (``manualbp.to_torch``, a copy back to torch.nn).
``manualbp.trace(model)`` records each layer's activation, error signal ∂L/∂y and parameter gradients
during a forward and backward.
"""

from manualbp import functional, nn
from manualbp.convert import convert, to_torch
from manualbp.trace import trace

__all__ = ["convert", "functional", "nn", "to_torch", "trace"]
__version__ = "0.1.0"
