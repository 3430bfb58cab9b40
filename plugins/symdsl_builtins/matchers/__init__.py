"""Built-in matchers."""
from .activation import ActivationMatching
from .learned import LearnedMatching
from .weight import WeightMatching

BUILTIN_MATCHERS = (WeightMatching, ActivationMatching, LearnedMatching)
