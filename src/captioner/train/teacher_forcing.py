"""Teacher-forcing schedules: epsilon, the probability of feeding the ground-truth previous word.

Scheduled sampling (Bengio et al. 2015, Sec. 2.4): at each decoding step the decoder is fed the true
previous word with probability epsilon and its own prediction otherwise; epsilon decays over training.
Schedules are functions of the (possibly fractional) epoch so the loop may evaluate them per batch.
"""

import math
from dataclasses import dataclass

from captioner.errors import require

SCHEDULES = ("always", "none", "linear", "exp", "inv_sigmoid")

# inv_sigmoid steepness: eps(0) = C / (C + 1) = 0.999 exactly, so training starts fully teacher-forced.
INV_SIGMOID_C = 999.0


@dataclass(frozen=True)
class TeacherForcingSchedule:
    """Epsilon as a function of the epoch; ``epsilon(epoch)`` is never below ``floor``.

    With E = ``epochs`` and e the (fractional) epoch:

    - ``always``: eps = 1 (plain teacher forcing); ``none``: eps = 0 (always feed own predictions).
    - ``linear``: eps = max(floor, 1 - (1 - floor) * e / (k * E)): 1 at e = 0, ``floor`` from e = k * E on.
    - ``exp``: eps = max(floor, gamma ** e).
    - ``inv_sigmoid``: Bengio et al.'s eps = c / (c + exp(e / s)) with c = 999 and s = k * E / ln(c),
      i.e. eps = 1 / (1 + c ** (e / (k * E) - 1)): eps(0) = 0.999, eps(k * E) = 0.5 exactly (the seed's
      ``inv_sigmoid(k)``: k = 1.0 crosses 0.5 at the last epoch), eps(2 * k * E) = 0.001; then
      max(floor, .).
    """

    name: str
    epochs: float
    k: float = 1.0
    floor: float = 0.0
    gamma: float = 0.9

    def __post_init__(self) -> None:
        require(
            self.name in SCHEDULES, f"tf.name={self.name!r} is unknown; use one of {', '.join(SCHEDULES)}"
        )
        require(
            self.epochs > 0, f"tf.epochs={self.epochs} must be > 0; set trainer.epochs to a positive number"
        )
        require(
            self.k > 0, f"tf.k={self.k} must be > 0 (epsilon reaches its midpoint/floor at epoch k*epochs)"
        )
        require(0 <= self.floor < 1, f"tf.floor={self.floor} must be in [0, 1); use e.g. tf.floor=0.0")
        require(0 < self.gamma < 1, f"tf.gamma={self.gamma} must be in (0, 1); use e.g. tf.gamma=0.9")

    def epsilon(self, epoch: float) -> float:
        """Probability of feeding the ground-truth previous word at this (fractional) epoch."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        if self.name == "always":
            return 1.0
        if self.name == "none":
            return 0.0
        if self.name == "exp":
            eps = self.gamma**epoch
        elif self.name == "linear":
            eps = 1.0 - (1.0 - self.floor) * epoch / (self.k * self.epochs)
        else:  # inv_sigmoid, written in the overflow-free logistic form of c / (c + exp(e / s))
            x = (epoch / (self.k * self.epochs) - 1.0) * math.log(INV_SIGMOID_C)
            eps = 1.0 / (1.0 + math.exp(x)) if x < 700 else 0.0
        return max(self.floor, eps)


def build_schedule(
    name: str, epochs: float, k: float = 1.0, floor: float = 0.0, gamma: float = 0.9
) -> TeacherForcingSchedule:
    """Teacher-forcing schedule from the ``tf`` config group (keys map 1:1 to these arguments)."""
    return TeacherForcingSchedule(name=name, epochs=epochs, k=k, floor=floor, gamma=gamma)
