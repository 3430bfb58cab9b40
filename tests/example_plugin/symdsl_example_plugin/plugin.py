"""Hook implementations of the example plugin: one matcher, one group kind and one spec folder."""
from __future__ import annotations

from pathlib import Path

from symdsl.act import identity_transform
from symdsl.match import Matcher, MatchResult
from symdsl.plugins import hookimpl

from .signed_permutation import SignedPermutation


class NoMatching(Matcher):
    """Vanilla averaging as a matcher: every site keeps the identity."""

    name = "none"
    description = "no alignment (identity on every site): the vanilla-averaging baseline"

    def match(self, resolved, state_a, state_b, *, seed=0, progress=None, **options):
        device = next(iter(state_a.values())).device
        return MatchResult(identity_transform(resolved, device=device), self.name, [], {"note": "identity"})


@hookimpl
def symdsl_matchers():
    return [NoMatching()]


@hookimpl
def symdsl_group_kinds():
    return [SignedPermutation()]


@hookimpl
def symdsl_spec_folders():
    return [Path(__file__).parent / "specs"]
