"""symdsl: align and merge independently trained Transformers modulo their parameter-space symmetries.

The symmetries of an architecture are declared in a YAML spec (see docs/spec-language.md),
checked against the traced graph and numerically (:func:`check`), and applied by one generic
action engine. The public API is this handful of names (docs/api.md)::

    import symdsl
    aligned = symdsl.align(model_a, model_b)      # B in A's frame, as B's class
    aligned.save("b-aligned")                     # a standard checkpoint + transform + record

>>> find_spec("hf-gpt2").name
'hf-gpt2'
"""
from ._version import __version__
# The subpackages that share a name with an API function (symdsl.check, .infer, .merge) are
# imported first, so that the function, bound below, is what ``symdsl.check`` names; their
# modules stay importable as usual (``from symdsl.check.static import static_check``).
from . import check as _check_package, infer as _infer_package, merge as _merge_package  # noqa: F401
from .api import (Alignment, BarrierReport, CheckReport, Merged, Registries, SymdslError, align, apply, barrier, check,
                  find_spec, infer, load_dataset, load_model, load_spec, load_spec_text, merge, undo_output_frame)

__all__ = ["Alignment", "BarrierReport", "CheckReport", "Merged", "Registries", "SymdslError", "__version__", "align", "apply",
           "barrier", "check", "find_spec", "infer", "load_dataset", "load_model", "load_spec", "load_spec_text",
           "merge", "undo_output_frame"]
