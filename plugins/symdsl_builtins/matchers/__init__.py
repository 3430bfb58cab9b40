"""Built-in matchers."""
from .activation import ActivationMatching
from .weight import WeightMatching

BUILTIN_MATCHERS = (WeightMatching, ActivationMatching)
