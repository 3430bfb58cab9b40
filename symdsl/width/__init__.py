"""Width-heterogeneous alignment: lift a narrow model into a wide model's space, then match there.

>>> from symdsl.width import lift, needs_lift, align_widths, LIFT_LAM
>>> LIFT_LAM
'uniform:0.2,0.5'
"""
from .adapters import ADAPTERS, WidthAdapter, get_adapter, register_adapter
from .align import LIFT_LAM, WidthAlignment, align_widths, lift_options
from .lift import Lifted, SiteLift, lift, needs_lift, site_sizes, wide_and_narrow

__all__ = ["ADAPTERS", "LIFT_LAM", "WidthAlignment", "align_widths", "lift_options", "Lifted", "SiteLift", "WidthAdapter", "get_adapter", "lift", "needs_lift",
           "register_adapter", "site_sizes", "wide_and_narrow"]
