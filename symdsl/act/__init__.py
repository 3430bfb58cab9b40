"""The action engine: apply group elements to state dicts, models and outputs."""
from .engine import act_model, act_outputs, act_state_dict, act_tensor
from .transform import identity_transform, random_transform

__all__ = ["act_model", "act_outputs", "act_state_dict", "act_tensor", "identity_transform", "random_transform"]
