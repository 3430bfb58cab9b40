"""The spec language: load YAML specs, check their structure, bind them to models."""
from .binding import BoundAxis, BoundFactor, CanonStep, ResolvedSpec, SiteDef, TensorBinding
from .load import Spec, load_spec, load_spec_text
from .resolve import detect_ties, model_config, resolve
from .schema import json_schema

__all__ = ["BoundAxis", "BoundFactor", "CanonStep", "ResolvedSpec", "SiteDef", "TensorBinding", "Spec",
           "load_spec", "load_spec_text", "detect_ties", "model_config", "resolve", "json_schema"]
