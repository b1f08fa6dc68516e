"""Former path of the merged-checkpoint writer, now :func:`visionpeft.backends.ultralytics.save_plain_checkpoint`.

Only ``backends/ultralytics_transfer.py`` still imports it from here; that module is being replaced by Ultralytics'
own transfer (issue 19, item 4), and this file goes with it.
"""

from ...backends.ultralytics import save_plain_checkpoint

__all__ = ["save_plain_checkpoint"]
