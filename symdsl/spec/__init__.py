"""The spec language: load YAML specs, check their structure, bind them to models."""
from .binding import BoundAxis, BoundFactor, CanonStep, ResolvedSpec, SiteDef, TensorBinding
from .load import Spec, load_spec, load_spec_text
from .config import model_config
from .coverage import detect_ties
from .resolve import TwoFormSpec, resolve
from .schema import json_schema

__all__ = ["BoundAxis", "BoundFactor", "CanonStep", "ResolvedSpec", "SiteDef", "TensorBinding", "Spec",
           "load_spec", "load_spec_text", "detect_ties", "model_config", "resolve", "TwoFormSpec",
           "json_schema"]
