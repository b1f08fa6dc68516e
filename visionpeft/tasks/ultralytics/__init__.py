"""The Ultralytics engine: every Ultralytics task (:data:`visionpeft.ultralytics_tasks.TASKS`) trained by Ultralytics'
own trainer of the task, extended with visionpeft strategies.

:data:`RUNNERS` holds one :class:`UltralyticsRunner` per row of the task table (``visionpeft.tasks.get_task("detect")``
returns ``RUNNERS["detect"]``). Importing this package does not import Ultralytics; the trainer, data checks and
merge modules do, when used.
"""

from ...ultralytics_tasks import TASKS
from .runner import UltralyticsRunner

__all__ = ["RUNNERS", "UltralyticsRunner"]

#: Ultralytics task -> its runner (one per row of the task table).
RUNNERS: dict[str, UltralyticsRunner] = {name: UltralyticsRunner(name) for name in TASKS}
