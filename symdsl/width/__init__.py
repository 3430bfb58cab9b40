"""Width-heterogeneous alignment: lift a narrow model into a wide model's space, then match there.

Width-heterogeneous *alignment* (lift, then match) is orchestration: :mod:`symdsl.api.widths`.

>>> from symdsl.width import lift, needs_lift
"""
from .adapters import ADAPTERS, WidthAdapter, get_adapter, register_adapter
from .lift import Lifted, SiteLift, lift, needs_lift, site_sizes, wide_and_narrow

__all__ = ["ADAPTERS", "Lifted", "SiteLift", "WidthAdapter", "get_adapter", "lift", "needs_lift",
           "register_adapter", "site_sizes", "wide_and_narrow"]
