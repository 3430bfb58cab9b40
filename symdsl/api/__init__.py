"""The public Python API (re-exported by ``import symdsl``): a thin, documented layer over the engine.

Every function takes an optional ``registries`` (:func:`symdsl.plugins.load`); without one it
uses the installed plugins.
"""
from ..data import load_dataset
from ..errors import SymdslError
from ..models import load_model
from ..plugins import default_registries
from ..registry import Registries
from ..spec import load_spec, load_spec_text
from ..spec.load import Spec
from ..spec.registry import find_spec as _find_spec
from .align import align
from .apply import apply
from .alignment import Alignment
from .barrier import BarrierReport, barrier
from .check import CheckReport, check, infer
from .merge import Merged, merge
from .output_frame import OutputFrame, undo_output_frame


def find_spec(name_or_path: str, registries: Registries | None = None, *, trust_code: bool = False) -> Spec:
    """A shipped or plugin spec by name, or a spec file by path (whose ``example.factory`` is
    imported only with ``trust_code``; see docs/security.md).

    >>> find_spec("hf-gpt2").name
    'hf-gpt2'
    """
    return _find_spec(name_or_path, registries or default_registries(), trust_code=trust_code)


__all__ = ["Alignment", "BarrierReport", "CheckReport", "Merged", "Registries", "SymdslError", "align", "apply", "barrier",
           "check", "find_spec", "infer", "load_dataset", "load_model", "load_spec", "load_spec_text", "merge",
           "OutputFrame", "undo_output_frame"]
