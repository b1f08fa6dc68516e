"""Former path of :mod:`visionpeft.tasks.ultralytics.trainer` (see the package docstring)."""

from ..ultralytics.trainer import TRAINERS, PeftTrainerMixin, trainer_for

__all__ = ["PeftTrainerMixin", "TRAINERS", "trainer_for", *(cls.__name__ for cls in TRAINERS.values())]
globals().update({cls.__name__: cls for cls in TRAINERS.values()})
