"""Built-in matchers."""
from .weight import WeightMatching

BUILTIN_MATCHERS = (WeightMatching,)
