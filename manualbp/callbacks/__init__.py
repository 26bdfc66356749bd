"""Lightning callbacks, one file each.

* ``GradientCheckCallback`` (``gradient_check.py``): checks the hand-written backward against autograd while
  a model trains.
* ``LearningAnimation`` (``learning_animation.py``): films backpropagation on one digit (a GIF at the end of fit).
* ``GradientFlow`` (``gradient_flow.py``): logs per layer the norms of the error signal, of each parameter's
  gradient and of its update, and draws the gradient-flow figure at the end of fit.
* ``Alignment`` (``alignment.py``): logs per layer the angle between the learning rule's update and the true
  backprop gradient on the same batch (``manualbp.rules``).
* ``KFACPreconditioner`` (``kfac.py``): preconditions each step's gradient with K-FAC's Kronecker factors, estimated
  by ``manualbp.curvature`` inside the step's backward.
"""

from manualbp.callbacks.alignment import Alignment
from manualbp.callbacks.gradient_check import GradientCheckCallback, GradientMismatchError
from manualbp.callbacks.gradient_flow import GradientFlow
from manualbp.callbacks.kfac import KFACPreconditioner
from manualbp.callbacks.learning_animation import LearningAnimation

__all__ = [
    "Alignment",
    "GradientCheckCallback",
    "GradientFlow",
    "GradientMismatchError",
    "KFACPreconditioner",
    "LearningAnimation",
]
