"""HF PEFT's adapter format: export (``save_adapter(format="peft")``) and import (``load_adapter`` on a PEFT folder).

``names`` (PEFT's keys and matching rules), ``export`` (an adapted model -> PEFT config + tensors, or a refusal),
``reader`` (a PEFT folder -> strategies + tensors, or a refusal), ``files`` (writing, loading, Hub repo ids).
See ``docs/peft_interop.md``.
"""

from .export import export_peft
from .files import load_peft_adapter, looks_like_peft, read_peft_source, save_peft_adapter
from .reader import PeftAdapter, check_tensors, is_peft_dir

__all__ = ["PeftAdapter", "check_tensors", "export_peft", "is_peft_dir", "load_peft_adapter", "looks_like_peft",
           "read_peft_source", "save_peft_adapter"]
