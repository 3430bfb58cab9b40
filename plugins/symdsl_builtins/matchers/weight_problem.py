"""Weight matching's working state: both models' tensors, the current elements, cached partial
products and correlations (see :mod:`symdsl_builtins.matchers.weight` for the algorithm).

Memory: A's and B's tensors stay in their storage dtype (a bfloat16 checkpoint costs 2 bytes a
parameter here, and nothing when the inputs are already on the device); each use upcasts one
tensor to float64. What is cached in float64 (A's upcasts, B with the sites outside the unit
applied) belongs to the unit in flight and is dropped when the next unit starts, within a byte
budget (``cache_bytes``): a unit that touches every tensor (the residual rotation) recomputes
instead of holding both models in float64. Caching only saves time, never changes a result.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from symdsl.act.engine import act_tensor
from symdsl.act.transform import identity_transform
from symdsl.match.solvers import maximize_trace
from symdsl.match.term_cache import TermCache
from symdsl.match.unfold import Occurrence, occurrences, unfold
from symdsl.models.libc import libc_function
from symdsl.models.pages import release_pages

F64 = torch.float64
PRECISIONS = {"mixed": torch.float32, "float64": torch.float64}   # dtype of correlations that feed assignments
_OFF = nullcontext()
_CHUNK = 1 << 22   # elements per float64 chunk when a constant correlation is formed from a lower dtype
_TERM_BYTES = 256 << 20   # correlation terms a unit may keep to score its tensors (at least; see keep_term)
_TRIM_BYTES = 64 << 20   # dropping at least this much of a unit's cache hands the allocator's free pages back


# glibc's malloc_trim (None elsewhere). Float64 blocks of a few tens of MB, freed unit after unit,
# stay in glibc's heap otherwise: the resident set then grows by sweeps, not by the working set.
_MALLOC_TRIM = libc_function("malloc_trim")


class Problem:
    """A and B on one device, the current elements, and cached partial products.

    ``a``/``b``: the tensors whose correlation changes during the descent, in their storage
    dtype (read them in float64 through :meth:`a64` and :meth:`base`); ``const``: for every other
    tensor (a single self-dual site on a whole axis, contracted over at least as many entries as
    the site has), its constant correlation term and norms. ``cache_bytes``: the most float64
    bytes kept for the unit in flight (default: the largest unit touching at most half of the
    layer tensors' float64 bytes, so one layer's units cache and the residual rotation streams).
    """

    def __init__(self, resolved, state_a, state_b, device, permutations_only, precision, profile):
        self.r = resolved
        self.sites = resolved.sites
        self.device = torch.device(device)
        self.profile = profile
        self.fast = PRECISIONS[precision]
        self.permutations_only = permutations_only
        self.occ = {s: occurrences(resolved, s) for s in self.sites}
        self.sites_of = {n: frozenset(b.sites()) for n, b in resolved.tensors.items()}
        self.elements = identity_transform(resolved, dtype=F64, device=self.device)
        self.is_identity = dict.fromkeys(self.sites, True)
        self.version = dict.fromkeys(self.sites, 0)   # bumped whenever a site's element changes
        self._clock = 0
        self._unit: frozenset[str] = frozenset()     # sites of the unit being solved (see the unit property)
        self._in_flight: frozenset[str] = frozenset()   # tensors the unit touches: the only ones cached
        self._a64: dict[str, torch.Tensor] = {}      # tensor -> float64 A (unit in flight only)
        self._held = 0                        # float64 bytes in _a64 and _base
        self._terms = 0                       # bytes of correlation terms kept to score the unit's tensors
        self.peak_held = 0                    # the most they ever held (tests, benchmarks)
        self.only: set[str] | None = None    # restrict correlations to these tensors (anchor phase)
        self.invertible_steps = 0             # L-BFGS iterations refining invertible sites (0: closed forms only)
        self.invertible_solver = "lbfgs"      # or "newton" (weight matcher option invertible_solver)
        self.cache: dict[str, float] = {}     # tensor -> ||A - act(g, B)||^2 for the current elements
        self._base: dict[str, tuple] = {}     # tensor -> ((key, B with the sites outside the unit applied), bytes)
        self.terms = TermCache(_TERM_BYTES)   # (site, tensor) -> correlation terms, while its other sites hold still
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.const: dict[str, tuple] = {}     # tensor -> (site, term (n, n) float64, ||A||^2, ||B||^2)
        self.norm_a: dict[str, float] = {}
        for name in resolved.tensors:
            occ = self._constant_occurrence(name, state_a[name])
            if occ is not None:
                term, norm_a, norm_b = self._constant_term(occ, state_a[name].detach(), state_b[name].detach())
                release_pages([state_a[name], state_b[name]])   # read once: their mapped pages can go
                self.const[name] = (self._site_at(occ), term, norm_a, norm_b)
                self.norm_a[name] = norm_a
                continue
            with self.phase("convert"):   # storage dtype: no copy when already on the device
                self.a[name] = state_a[name].detach().to(device=self.device)
                self.b[name] = state_b[name].detach().to(device=self.device)
                self.norm_a[name] = float((self.a[name].to(F64) ** 2).sum())
                release_pages([self.a[name]])
        self.cache_bytes = self._default_budget()

    # -- the float64 working set of the unit in flight --------------------------------------------
    @property
    def unit(self) -> frozenset[str]:
        """The sites being solved together; setting another unit drops the previous one's cache."""
        return self._unit

    @unit.setter
    def unit(self, sites) -> None:
        sites = frozenset(sites)
        if sites != self._unit:
            dropped = self._held
            self._a64.clear()
            self._base.clear()
            self._held = 0
            self._terms = 0
            self._in_flight = frozenset(self.touched(sites))
            if dropped >= _TRIM_BYTES and _MALLOC_TRIM is not None and self.device.type == "cpu":
                _MALLOC_TRIM(0)   # returns whole free pages inside the heap too (madvise), not only its top
        self._unit = sites

    def _default_budget(self) -> int:
        """Float64 bytes of the largest unit (a parent with its ``per`` children) whose tensors are
        at most half of all non-constant tensors' float64 bytes (all of them when none is)."""
        size = {n: 8 * t.numel() for n, t in self.a.items()}
        total = sum(size.values())
        units: dict[str, set[str]] = {}
        for s, info in self.sites.items():
            root = info.per if info.per in self.sites else s
            units.setdefault(root, set()).add(s)
        # x2: A's float64 copy and B's moved copy of every tensor of the unit
        costs = [2 * sum(size.get(n, 0) for n in self.touched(group)) for group in units.values()]
        small = [c for c in costs if c <= total]
        return max(small) if small else 2 * total

    def _keep(self, cache: dict, name: str, value, nbytes: int) -> None:
        """Cache ``value`` under ``name`` if the tensor belongs to the unit in flight and fits the budget."""
        if name not in self._in_flight:
            return
        old = cache.pop(name, None)
        if old is not None:
            self._held -= old[1]
        if self._held + nbytes > self.cache_bytes:
            return
        cache[name] = (value, nbytes)
        self._held += nbytes
        self.peak_held = max(self.peak_held, self._held)

    def keep_term(self, term: torch.Tensor) -> bool:
        """May a (n, n) correlation term be kept to score its tensor after the solve? Within
        max(cache_bytes, 256 MB) per unit: the residual rotation has one term per tensor (7 per
        Llama layer, 8 MB each at hidden 1024, 134 MB at 4096); past it, tensors are re-measured."""
        size = term.numel() * term.element_size()
        if self._terms + size > max(self.cache_bytes, _TERM_BYTES):
            return False
        self._terms += size
        return True

    def a64(self, name: str) -> torch.Tensor:
        """A[name] in float64 (cached while its unit is in flight)."""
        hit = self._a64.get(name)
        if hit is not None:
            return hit[0]
        with self.phase("convert"):
            x = self.a[name].to(F64)
            release_pages([self.a[name]])   # a checkpoint's mapped pages, read: mapped again when needed
        self._keep(self._a64, name, x, 8 * x.numel())
        return x

    def b64(self, name: str) -> torch.Tensor:
        """B[name] in float64 (not cached: :meth:`base` caches what is derived from it)."""
        with self.phase("convert"):
            x = self.b[name].to(F64)
            release_pages([self.b[name]])
            return x

    # -- instrumentation (free when no profile is given) ------------------------------------------
    def phase(self, name: str):
        return _OFF if self.profile is None else self.profile.phase(name)

    def note(self, event: str, **data) -> None:
        if self.profile is not None and hasattr(self.profile, "note"):
            self.profile.note(event, **data)

    def correlate(self, a: torch.Tensor, b: torch.Tensor, dtype=F64) -> torch.Tensor:
        """a @ b^T (batched), the matmul every site's solve reduces to, in ``dtype``."""
        with self.phase("correlate"):
            if a.dtype != dtype:
                a, b = a.to(dtype), b.to(dtype)
            self.note("matmul", a=a, b=b.mT)
            return a @ b.mT

    # -- constant tensors -------------------------------------------------------------------------
    def _site_at(self, occ: Occurrence) -> str:
        return self.r.tensors[occ.tensor].axes[occ.axis].parts[occ.part][occ.factor].site

    def _constant_occurrence(self, name: str, tensor: torch.Tensor) -> Occurrence | None:
        """The one occurrence of the only site of ``name`` if its correlation never changes (else None)."""
        if len(self.sites_of[name]) != 1:
            return None
        (site,) = self.sites_of[name]
        info = self.sites[site]
        occs = [o for o in self.occ[site] if o.tensor == name]
        if len(occs) != 1 or not (info.kind.self_dual and info.kind.square) or info.per is not None:
            return None
        if len(self.r.tensors[name].axes[occs[0].axis].parts) != 1:
            return None
        # worth keeping only if the (n, n) term is no larger than the tensor it summarises
        return occs[0] if tensor.numel() >= info.size * info.size else None

    def _constant_term(self, occ: Occurrence, a: torch.Tensor, b: torch.Tensor):
        """(A B^T unfolded along the site, ||A||^2, ||B||^2) in float64, without a float64 copy of A or B."""
        binding = self.r.tensors[occ.tensor]
        a, b = unfold(a, binding, occ), unfold(b, binding, occ)          # (n, rest), source dtype
        step = max(1, _CHUNK // max(a.shape[0], 1))
        term = None
        norms = torch.zeros(2, dtype=F64, device=self.device)      # ||A||^2, ||B||^2 (one sync at the end)
        for start in range(0, a.shape[1], step):
            with self.phase("convert"):
                ca = a[:, start:start + step].to(device=self.device, dtype=F64)
                cb = b[:, start:start + step].to(device=self.device, dtype=F64)
            part = self.correlate(ca, cb)
            term = part if term is None else term.add_(part)
            with self.phase("score"):
                norms += torch.stack([(ca * ca).sum(), (cb * cb).sum()])
        norm_a, norm_b = norms.tolist()
        return term, norm_a, norm_b

    def const_terms(self, site: str):
        """(tensor, term, ||A||^2, ||B||^2) of the constant tensors of ``site`` (respecting ``only``)."""
        for name, (s, term, norm_a, norm_b) in self.const.items():
            if s == site and (self.only is None or name in self.only):
                yield name, term, norm_a, norm_b

    def const_error(self, name: str) -> float:
        site, term, norm_a, norm_b = self.const[name]
        return norm_a + norm_b - 2.0 * float((self.matrix(site) * term).sum())

    def matrix(self, site: str) -> torch.Tensor:
        g = self.elements[site]
        return g if g.is_floating_point() else self.sites[site].kind.to_matrix(g, dtype=F64).to(g.device)

    # -- elements ---------------------------------------------------------------------------------
    def set(self, site: str, g: torch.Tensor, identity: bool = False) -> None:
        """Make ``g`` the element of ``site``; cached products that used the old one become stale."""
        old = self.elements[site]
        if (identity == self.is_identity[site] and old.shape == g.shape and old.dtype == g.dtype
                and torch.equal(old, g)):
            return
        self.elements[site] = g
        self.is_identity[site] = identity
        self._clock += 1
        self.version[site] = self._clock

    def active(self, sites) -> dict:
        """The elements of ``sites`` that do something (a square kind's identity is skipped)."""
        return {s: self.elements[s] for s in sites
                if not (self.is_identity[s] and self.sites[s].kind.square)}

    # -- moving B ---------------------------------------------------------------------------------
    def touched(self, sites) -> list[str]:
        return sorted({o.tensor for s in sites for o in self.occ[s]})

    def base(self, name: str) -> torch.Tensor:
        """B[name] in float64 with the current elements of every site outside the unit applied
        (cached while the unit is in flight, within ``cache_bytes``)."""
        inside = self.unit & self.sites_of[name]
        outside = sorted(self.sites_of[name] - inside)
        key = (inside, tuple(self.version[s] for s in outside))
        hit = self._base.get(name)
        if hit is not None and hit[0][0] == key:
            return hit[0][1]
        elements = self.active(outside)
        x = self.b64(name)
        if elements:
            with self.phase("apply"):
                x = act_tensor(x, self.r.tensors[name], elements, self.sites)
        self._keep(self._base, name, (key, x), 8 * x.numel())
        return x

    def moved(self, name: str, exclude=frozenset()) -> torch.Tensor:
        """B[name] with every current element applied except those of ``exclude``.

        Sites outside the unit come from the cached :meth:`base`; the unit's own (cheap:
        permutations and per-head maps, or one site) are applied on top. A unit holds a parent
        together with its ``per`` children, so the order the engine needs (parent first) holds.
        """
        exclude = frozenset(exclude)
        if not exclude <= self.unit:       # not a unit's question: move from scratch
            elements = self.active(self.sites_of[name] - exclude)
            with self.phase("apply"):
                return act_tensor(self.b64(name), self.r.tensors[name], elements, self.sites)
        x = self.base(name)
        elements = self.active((self.unit - exclude) & self.sites_of[name])
        if elements:
            with self.phase("apply"):
                x = act_tensor(x, self.r.tensors[name], elements, self.sites)
        return x

    def errors(self, names) -> dict[str, float]:
        """||A_t - act(g, B)_t||^2 per tensor for the current elements."""
        out = {}
        for n in names:
            if n in self.const:
                out[n] = self.const_error(n)
                continue
            x = self.moved(n)
            with self.phase("score"):
                # in place on the one difference tensor: the same number as (a - x) ** 2, a third of the time
                out[n] = float(torch.sub(self.a64(n), x).square_().sum())
        return out

    def unfolded_pairs(self, site: str, exclude: set[str], inner: str | None = None, tensors=None):
        """(occurrence, A unfolded, B unfolded with every site but ``exclude`` applied); constant tensors excluded.
        ``inner``: a permutation site per the same parent kept as its own axis (see :func:`unfold`);
        ``tensors``: only these tensor names (None: all)."""
        parent = self.sites[site].per
        by_tensor: dict[str, list[Occurrence]] = {}
        for o in self.occ[site]:
            by_tensor.setdefault(o.tensor, []).append(o)
        for name, occs in by_tensor.items():
            if name in self.const or (self.only is not None and name not in self.only):
                continue
            if tensors is not None and name not in tensors:
                continue
            binding = self.r.tensors[name]
            # occurrences in different parts of one fused axis (q | k of c_attn) touch disjoint slices:
            # each is linear in g on its own
            disjoint = len({(o.axis, o.part) for o in occs}) == len(occs) and len({o.axis for o in occs}) == 1
            if len(occs) == 1 or disjoint:
                moved_b = self.moved(name, exclude)
                for o in occs:
                    yield o, unfold(self.a64(name), binding, o, parent, inner), unfold(moved_b, binding, o, parent, inner)
                continue
            kind = self.sites[site].kind
            if not kind.self_dual or parent is not None:
                continue   # several occurrences of a non-self-dual site in one tensor: not linear in g; skip it
            moved_b = self.moved(name, set(exclude) - {site})
            undo = kind.inverse(self.elements[site])
            for o in occs:  # linearise: current g on the other occurrences, undone on this one
                with self.phase("apply"):
                    undone = kind.apply(undo, unfold(moved_b, binding, o), 0)
                yield o, unfold(self.a64(name), binding, o), undone

    def circuit_sides(self, kid: str, exclude: set[str], inner: str | None = None):
        """``(X_A, X_B, Y_A, Y_B)``: a per-head child's primal and dual occurrences, each side
        concatenated along its last axis: (P, n, M), or (P, m, n, M) with ``inner`` (a tensor
        without that site repeats along m). Y is X when the child is self-dual or held at the
        identity (its dual occurrences then count as primal); None when it has no primal one."""
        solving = self.solving_kind(kid)
        self_dual = solving is None or solving.self_dual
        m = self.sites[inner].size if inner is not None else None
        primal_a, primal_b, dual_a, dual_b = [], [], [], []
        for occ, a, b in self.unfolded_pairs(kid, exclude, inner=inner):
            if m is not None:
                a, b = a.expand(a.shape[0], m, *a.shape[2:]), b.expand(b.shape[0], m, *b.shape[2:])
            if occ.dual and not self_dual:
                dual_a.append(a), dual_b.append(b)
            else:
                primal_a.append(a), primal_b.append(b)
        if not primal_a:
            return None
        xa, xb = torch.cat(primal_a, -1), torch.cat(primal_b, -1)
        if not dual_a:
            return xa, xb, xa, xb
        return xa, xb, torch.cat(dual_a, -1), torch.cat(dual_b, -1)

    def term_stamp(self, site: str, name: str, dtype) -> tuple | None:
        """When ``site``'s correlation terms of tensor ``name`` are worth keeping across sweeps, the
        stamp they are valid for (dtype, versions of the tensor's other sites); else None.

        Worth it when the (n, n) term is no larger than the tensor it summarises and every other
        site of the tensor is solved as a discrete kind (or not at all): permutations settle after
        the anchored pass, while least-squares and rotation sites move every sweep."""
        info = self.sites[site]
        if info.per is not None or name in self.const:
            return None
        if sum(o.tensor == name for o in self.occ[site]) != 1:
            return None      # several occurrences are linearised around the site's own current element
        if self.a[name].numel() < info.size * (info.size_in or info.size):
            return None
        others = sorted(self.sites_of[name] - {site})
        if any((kind := self.solving_kind(s)) is not None and not kind.discrete for s in others):
            return None
        return (dtype, tuple(self.version[s] for s in others))

    def solving_kind(self, site: str):
        """The kind ``site`` is solved as: its own, or with ``permutations_only`` its kind's
        permutation restriction (None: the site keeps its current element)."""
        info = self.sites[site]
        return info.kind.permutation_restriction(info.options) if self.permutations_only else info.kind

    def solving_options(self, site: str, kind) -> dict:
        """The site's options for its own kind; a restriction is used without options."""
        return self.sites[site].options if kind is self.sites[site].kind else {}

    def solve(self, kind, c: torch.Tensor, options) -> torch.Tensor:
        """argmax_g tr(g^T C) for ``kind``, timed as an assignment or an SVD; matrices in float64."""
        with self.phase("assign" if kind.discrete else "svd"):
            self.note("maximize_trace", kind=kind, c=c, options=options)
            g = maximize_trace(kind, c, options).to(c.device)
        # a discrete kind solved from a float32 correlation returns float32 matrices
        return g.to(F64) if g.is_floating_point() else g
