"""Reconciliation: one exchange window and networks by weighted least squares.

Pure functions over numbers (numpy/scipy): no I/O, no clock, no database.

**Exchange window.** For one exchange and window, ``S`` = Σ sent, ``R`` = Σ received, loss
``l``; the imbalance ``d = (1 − l)·S − R`` with ``σ_d = sqrt(((1 − l)·σ_S)² + σ_R²)``, where a
meter's ``σ² = (uncertainty·q)² + uncertainty_abs²`` and ``σ_S²`` (``σ_R²``) is the sum over the
sent (received) meters; ``z = d / σ_d``. See :func:`reconcile_exchange`.

**Network.** Meters that take part in several exchanges or balances are reconciled together.
Measurements ``y`` (n) with ``V = diag(σ²)`` and linear constraints ``A_m x_m + A_u x_u = 0``
(``x_u``: unmeasured streams, or meters treated as unmeasured):

1. *Projection* (Crowe et al. 1983): ``P`` with ``P·A_u = 0`` spans the left null space of
   ``A_u`` (``scipy.linalg.null_space(A_uᵀ)ᵀ``); the measured part must satisfy ``B x_m = 0``
   with ``B = P·A_m``. ``B`` is replaced by an orthonormal basis of its row space, so
   redundant constraints cost nothing and ``dof = rank(P·A_m)``.
2. *Reconciliation*: ``x̂ = y − V Bᵀ H⁻¹ B y`` with residuals ``r = B y`` and ``H = B V Bᵀ``.
   Adjustments ``a = y − x̂`` (measured minus reconciled), with covariance
   ``W = V Bᵀ H⁻¹ B V``.
3. *Global test*: ``γ = rᵀ H⁻¹ r`` (= ``Σ (a_j/σ_j)²``) against ``χ²_{1−α}(dof)``.
4. *Measurement test*: ``z_j = a_j / sqrt(W_jj)``. A measurement that no constraint reaches
   (its column of ``B`` is zero: non-redundant) has ``W_jj = 0`` and **no test**: its ``z`` is
   ``None`` and it is never named a suspect. The critical value is Šidák-corrected over the
   ``n`` tested measurements: ``β = 1 − (1 − α)^{1/n}``, ``z_crit = Φ⁻¹(1 − β/2)``.
5. *Unmeasured streams*: estimated by least squares from ``A_u x_u = −A_m x̂_m``. Stream ``j`` is
   observable when the null space of ``A_u`` has no component on it; unobservable streams get
   no estimate (``None``).

**Floating-point range.** Squares of large quantities overflow (``(0.01·1e200)²``) and squares
of tiny ones vanish. One exchange squares nothing: ``σ`` by ``hypot``, the reconciliation by
shares ``(σ_i/σ_d)²``. The network least squares works on ``y`` and ``σ`` scaled by a power of
two (exact in binary floating point) when their largest magnitude is beyond ``2^±SCALE_LIMIT``,
and scales the results back. Nothing here raises for finite input: a result that cannot be
represented is *flagged* — an exchange window gets status ``error`` with the cause in
``error``, a variance is ``inf``, and :meth:`Reconciliation.problem` names a network result
that is not a finite number.

**Serial elimination** (:func:`serial_elimination`): while the global test rejects, the tested
measurement with the largest ``|z_j|`` is removed (treated as unmeasured: its column moves from
``A_m`` to ``A_u``), and the rest is reconciled again; this repeats until the global test passes
or no redundancy is left. The removed meters, in order, are the **suspects**. Removing the worst
one first isolates a single bias from the neighbours it smears onto.

Sign convention (Narasimhan & Jordache): an adjustment is ``a = measured − reconciled``; a
positive ``z`` means the meter reads high.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

# scipy ships no type information (no py.typed); scipy-stubs would make the ignore unused.
from scipy import linalg, stats  # type: ignore[import-untyped, unused-ignore]

FloatArray = npt.NDArray[np.float64]
ExchangeStatus = Literal["ok", "imbalance", "incomplete", "no_data", "error"]

#: A window is ``imbalance`` when ``|z|`` exceeds this.
Z_THRESHOLD = 3.0
#: A window whose meters are covered less than this is ``incomplete``.
MIN_COVERAGE = 0.9
#: Significance level of the global and measurement tests.
ALPHA = 0.05

# Relative tolerances: rank of a matrix (singular values below RANK_TOL·s_max are zero), a
# measurement's redundancy (its column in the orthonormal constraint basis) and testability
# (W_jj relative to its variance).
RANK_TOL = 1e-10
REDUNDANCY_TOL = 1e-9
TEST_TOL = 1e-12

#: A measurement's variance below this share of the largest measurement squared is 0: the
#: meter is exact (its inverse would overflow; no real meter is that precise).
NEGLIGIBLE_VARIANCE = 1e-280

#: Magnitudes within ``2^±SCALE_LIMIT`` are computed as they are (their squares, and sums of
#: many squares, stay far inside the float range); beyond it, in scaled form.
SCALE_LIMIT = 400


def _exponent(x: float) -> int:
    """The binary exponent of ``x`` (``x = m·2^e``, ``0.5 ≤ |m| < 1``), 0 for 0."""
    return math.frexp(x)[1] if x != 0.0 and math.isfinite(x) else 0


def _scale_exponent(magnitudes: Sequence[float]) -> int:
    """The power of two to divide by so that the largest magnitude is about 1: 0 (no scaling)
    when that magnitude is within ``2^±SCALE_LIMIT``."""
    e = max((_exponent(abs(x)) for x in magnitudes if x != 0.0), default=0)
    return e if abs(e) > SCALE_LIMIT else 0


def _unscale(x: float, e: int) -> float:
    """``x·2^e``, ``±inf`` when that is beyond the float range (never raises)."""
    if e == 0 or x == 0.0 or not math.isfinite(x):
        return x
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.copysign(math.inf, x)


# ----------------------------------------------------------------------------------------------
# One exchange and window
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterQuantity:
    """One meter's quantity in one window, with what is needed for its σ.

    ``quantity`` is ``None`` when the meter has no data for the window. ``uncertainty`` is the
    relative standard uncertainty (1 σ) and ``uncertainty_abs`` the absolute one, canonical
    unit; ``coverage`` the fraction of the window the readings span.
    """

    meter_id: str
    quantity: float | None
    uncertainty: float
    uncertainty_abs: float = 0.0
    coverage: float = 1.0


def meter_variance(quantity: float, uncertainty: float, uncertainty_abs: float = 0.0) -> float:
    """``σ² = (uncertainty·q)² + uncertainty_abs²`` of one meter's window quantity; ``inf`` when
    it is beyond the float range (never raises for finite input)."""
    a = uncertainty * quantity
    if math.isfinite(a) and _scale_exponent((a, uncertainty_abs)) == 0:
        return a * a + uncertainty_abs * uncertainty_abs
    sigma = meter_sigma(quantity, uncertainty, uncertainty_abs)
    return sigma * sigma  # inf beyond the float range (a float product does not raise)


def meter_sigma(quantity: float, uncertainty: float, uncertainty_abs: float = 0.0) -> float:
    """``σ = sqrt((uncertainty·q)² + uncertainty_abs²)``, computed without squaring (``inf``
    only when ``σ`` itself is beyond the float range, which takes ``uncertainty > 1``)."""
    a = uncertainty * quantity
    if math.isfinite(a):
        return math.hypot(a, uncertainty_abs)
    # uncertainty·q overflowed: scale it by the power of two of the larger term
    e = max(_exponent(quantity) + _exponent(uncertainty), _exponent(uncertainty_abs))
    a_s = math.ldexp(uncertainty, _exponent(quantity) - e) * math.frexp(quantity)[0]
    return _unscale(math.hypot(a_s, math.ldexp(uncertainty_abs, -e)), e)


def ratio_z(d: float, sigma: float) -> float:
    """``d / σ``, defined for ``σ = 0``: ``0`` when ``d = 0``, else ``±inf`` (sign of ``d``).

    Two exact meters that disagree are infinitely improbable, not a crash.
    """
    if sigma > 0.0:
        return d / sigma
    if d == 0.0:
        return 0.0
    return math.copysign(math.inf, d)


@dataclass(frozen=True, slots=True)
class ExchangeWindow:
    """The reconciliation of one exchange and window.

    ``sent``/``received`` are ``S``/``R`` over the meters that have a quantity (``None`` when a
    side has none); ``imbalance`` is ``d``, ``sigma`` is ``σ_d``, ``z`` is ``d/σ_d``
    (see :func:`ratio_z` for ``σ_d = 0``); ``coverage`` is the lowest coverage of any meter.

    ``reconciled_sent``/``reconciled_received`` are the WLS estimates ``Ŝ``, ``R̂`` of the
    two-measurement problem with the single constraint ``(1 − l)·S = R`` (what
    ``billing: reconciled`` bills); ``reconciled_meters`` splits them per meter (each meter
    moves in proportion to its own variance, so the per-meter values sum to ``Ŝ`` and ``R̂``).
    They are ``None`` when either side has no data, or when ``σ_d = 0`` and ``d ≠ 0`` (no
    estimate satisfies the constraint while moving no exact meter).

    Status ``error`` (with the cause in ``error``, every number ``None``): some result is
    beyond the floating-point range (sums of quantities near ``1.8e308``).
    """

    status: ExchangeStatus
    sent: float | None
    received: float | None
    loss: float
    imbalance: float | None
    sigma: float | None
    z: float | None
    coverage: float
    sigma_sent: float | None = None
    sigma_received: float | None = None
    reconciled_sent: float | None = None
    reconciled_received: float | None = None
    reconciled_meters: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None


def _fsum(values: Sequence[float]) -> float:
    """``math.fsum``, or ``±inf``/``nan`` instead of its OverflowError."""
    try:
        return math.fsum(values)
    except OverflowError:
        return sum(values, 0.0)


def _side(
    meters: Sequence[MeterQuantity],
) -> tuple[float | None, float, list[tuple[MeterQuantity, float, float]]]:
    """Σ q, σ of the sum, and per meter present (meter, q, σ)."""
    present = [
        (m, m.quantity, meter_sigma(m.quantity, m.uncertainty, m.uncertainty_abs))
        for m in meters
        if m.quantity is not None
    ]
    if not present:
        return None, 0.0, present
    total = _fsum([q for _, q, _ in present])
    return total, math.hypot(*(sigma for _, _, sigma in present)), present


def reconcile_exchange(
    sent: Sequence[MeterQuantity],
    received: Sequence[MeterQuantity],
    loss: float,
    *,
    z_threshold: float = Z_THRESHOLD,
    min_coverage: float = MIN_COVERAGE,
) -> ExchangeWindow:
    """Reconcile one exchange in one window.

    Status, first match wins:

    * ``error``: a result is beyond the floating-point range (see :class:`ExchangeWindow`);
    * ``no_data``: a side has no meter with a quantity (nothing to compare);
    * ``incomplete``: some meter has no quantity or covers less than ``min_coverage`` of the
      window; ``S``, ``R``, ``d`` and ``z`` are still reported over the meters present, but the
      window is never called an imbalance;
    * ``imbalance``: ``|z| > z_threshold``;
    * ``ok``.

    Nothing is squared: ``σ`` by ``hypot``, and the reconciliation by the shares
    ``(σ_i/σ_d)² ≤ 1/(1 − l)²``; so quantities of any finite magnitude are taken and it never
    raises for them.
    """
    if not 0.0 <= loss < 1.0:
        raise ValueError(f"loss must be in [0, 1): {loss}")
    meters = [*sent, *received]
    coverage = min((m.coverage for m in meters), default=0.0)
    s_total, s_sigma, s_present = _side(sent)
    r_total, r_sigma, r_present = _side(received)
    if s_total is None or r_total is None:
        return _checked(
            ExchangeWindow(
                status="no_data",
                sent=s_total,
                received=r_total,
                loss=loss,
                imbalance=None,
                sigma=None,
                z=None,
                coverage=coverage,
            )
        )

    k = 1.0 - loss
    d = k * s_total - r_total
    sigma_d = math.hypot(k * s_sigma, r_sigma)
    z = ratio_z(d, sigma_d)

    complete = all(m.quantity is not None and m.coverage >= min_coverage for m in meters)
    status: ExchangeStatus
    if not complete:
        status = "incomplete"
    elif abs(z) > z_threshold:
        status = "imbalance"
    else:
        status = "ok"

    # WLS of the two-measurement problem, A = [k, −1]: x̂ = y − V Aᵀ d / σ_d², applied per
    # meter (V diagonal over the individual meters, which sums to the side totals): a sent
    # meter moves by −k·d·(σ_i/σ_d)², a received one by +d·(σ_i/σ_d)².
    per_meter: dict[str, float] = {}
    rec_s: float | None = None
    rec_r: float | None = None
    if sigma_d > 0.0 or d == 0.0:

        def share(sigma: float) -> float:
            r = sigma / sigma_d if sigma_d > 0.0 else 0.0
            return r * r

        for m, q, sigma in s_present:
            per_meter[m.meter_id] = q - k * d * share(sigma)
        for m, q, sigma in r_present:
            per_meter[m.meter_id] = q + d * share(sigma)
        rec_s = s_total - k * d * share(s_sigma)
        rec_r = r_total + d * share(r_sigma)

    return _checked(
        ExchangeWindow(
            status=status,
            sent=s_total,
            received=r_total,
            loss=loss,
            imbalance=d,
            sigma=sigma_d,
            z=z,
            coverage=coverage,
            sigma_sent=s_sigma,
            sigma_received=r_sigma,
            reconciled_sent=rec_s,
            reconciled_received=rec_r,
            reconciled_meters=per_meter,
        )
    )


def _checked(res: ExchangeWindow) -> ExchangeWindow:
    """``res``, or status ``error`` naming the first result that is not a finite number (``z``
    may be ``±inf``: exact meters that disagree, see :func:`ratio_z`)."""
    named: list[tuple[str, float | None]] = [
        ("S (the sent quantity)", res.sent),
        ("R (the received quantity)", res.received),
        ("d (the imbalance)", res.imbalance),
        ("σ_d", res.sigma),
        ("σ of the sent side", res.sigma_sent),
        ("σ of the received side", res.sigma_received),
        ("the reconciled sent quantity", res.reconciled_sent),
        ("the reconciled received quantity", res.reconciled_received),
        *((f"the reconciled quantity of meter {k}", v) for k, v in res.reconciled_meters.items()),
    ]
    for name, value in named:
        if value is not None and not math.isfinite(value):
            return ExchangeWindow(
                status="error",
                sent=None,
                received=None,
                loss=res.loss,
                imbalance=None,
                sigma=None,
                z=None,
                coverage=res.coverage,
                error=f"{name} is beyond the floating-point range (about ±1.8e308)",
            )
    return res


# ----------------------------------------------------------------------------------------------
# Building A from a description of the network
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Constraint:
    """One linear constraint ``Σ coefficient·x = 0`` over meter or stream ids."""

    id: str
    coefficients: Mapping[str, float]


def _accumulate(terms: Sequence[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, coef in terms:
        out[key] = out.get(key, 0.0) + coef
    return {k: v for k, v in out.items() if v != 0.0}


def balance_constraint(
    id: str, inflows: Sequence[str], outflows: Sequence[str], loss: float = 0.0
) -> Constraint:
    """A balance point: ``Σ out − (1 − loss)·Σ in = 0``."""
    k = 1.0 - loss
    terms = [(m, 1.0) for m in outflows] + [(m, -k) for m in inflows]
    return Constraint(id, _accumulate(terms))


def exchange_constraint(
    id: str, sent: Sequence[str], received: Sequence[str], loss: float = 0.0
) -> Constraint:
    """An exchange: ``(1 − loss)·Σ sent − Σ received = 0``."""
    k = 1.0 - loss
    terms = [(m, k) for m in sent] + [(m, -1.0) for m in received]
    return Constraint(id, _accumulate(terms))


@dataclass(frozen=True, slots=True)
class ConstraintSystem:
    """``A_m x_m + A_u x_u = 0``: rows follow ``constraint_ids``, columns the id lists."""

    constraint_ids: tuple[str, ...]
    measured_ids: tuple[str, ...]
    unmeasured_ids: tuple[str, ...]
    a_measured: FloatArray
    a_unmeasured: FloatArray


def build_system(
    constraints: Sequence[Constraint],
    measured: Sequence[str],
    unmeasured: Sequence[str] = (),
) -> ConstraintSystem:
    """Matrices of a network from its constraints and the ids of measured/unmeasured streams.

    Every id a constraint names must be listed exactly once, as measured or unmeasured.
    """
    measured_ids = tuple(measured)
    unmeasured_ids = tuple(unmeasured)
    both = set(measured_ids) & set(unmeasured_ids)
    if both:
        raise ValueError(f"ids both measured and unmeasured: {sorted(both)}")
    for ids, what in ((measured_ids, "measured"), (unmeasured_ids, "unmeasured")):
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate {what} ids")
    col_m = {k: j for j, k in enumerate(measured_ids)}
    col_u = {k: j for j, k in enumerate(unmeasured_ids)}
    a_m = np.zeros((len(constraints), len(measured_ids)))
    a_u = np.zeros((len(constraints), len(unmeasured_ids)))
    for i, c in enumerate(constraints):
        for key, coef in c.coefficients.items():
            if key in col_m:
                a_m[i, col_m[key]] += coef
            elif key in col_u:
                a_u[i, col_u[key]] += coef
            else:
                raise ValueError(f"constraint {c.id!r}: unknown id {key!r}")
    return ConstraintSystem(
        constraint_ids=tuple(c.id for c in constraints),
        measured_ids=measured_ids,
        unmeasured_ids=unmeasured_ids,
        a_measured=a_m,
        a_unmeasured=a_u,
    )


# ----------------------------------------------------------------------------------------------
# Network reconciliation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterResult:
    """One measurement in a reconciliation.

    ``adjustment`` is ``measured − reconciled``. ``z`` is ``None`` for a measurement with no
    test (non-redundant). ``suspect``: named by the procedure that produced the result; in
    :func:`reconcile` the measurement test rejects it (``|z| > z_crit``), in
    :func:`serial_elimination` it was eliminated (its ``reconciled`` value is then the estimate
    from the other meters, ``None`` if they cannot observe it, and its ``z`` is ``None``).
    """

    id: str
    measured: float
    sigma: float
    reconciled: float | None
    adjustment: float | None
    z: float | None
    redundant: bool
    suspect: bool


@dataclass(frozen=True, slots=True)
class StreamResult:
    """One unmeasured stream: its estimate, or ``None`` when it is not observable."""

    id: str
    estimate: float | None
    observable: bool


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """A network reconciliation: per meter, per unmeasured stream, and the global test.

    ``statistic`` is ``γ = rᵀ H⁻¹ r`` (``inf`` when exact meters contradict each other);
    ``dof = rank(P·A_m)``; ``critical = χ²_{1−α}(dof)`` (``None`` when ``dof = 0``: nothing to
    test, ``passed`` is then true). ``z_critical`` is the Šidák-corrected measurement-test
    threshold over the ``tested`` measurements (``None`` when none is tested).
    ``constraint_z`` is the nodal test ``r_i / sqrt(H_ii)`` of each original constraint that
    involves no unmeasured stream (``None`` for the others, or when its variance is 0).
    """

    meters: tuple[MeterResult, ...]
    streams: tuple[StreamResult, ...]
    statistic: float
    dof: int
    critical: float | None
    passed: bool
    alpha: float
    tested: int
    z_critical: float | None
    constraint_ids: tuple[str, ...]
    constraint_z: tuple[float | None, ...]
    reconciled: FloatArray
    adjustments: FloatArray
    adjustment_covariance: FloatArray

    def meter(self, id: str) -> MeterResult:
        for m in self.meters:
            if m.id == id:
                return m
        raise KeyError(id)

    def stream(self, id: str) -> StreamResult:
        for s in self.streams:
            if s.id == id:
                return s
        raise KeyError(id)

    @property
    def suspects(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.meters if m.suspect)

    def problem(self) -> str | None:
        """The first result that is not a number a caller can store, or None: a reconciled
        value, adjustment or estimate beyond the float range, or a nan anywhere (``±inf`` is
        meaningful for the statistic and a ``z``: exact meters that contradict each other)."""
        if math.isnan(self.statistic):
            return "the χ² statistic is not a number"
        for mr in self.meters:
            for what, value in (("reconciled value", mr.reconciled), ("adjustment", mr.adjustment)):
                if value is not None and not math.isfinite(value):
                    return f"the {what} of meter {mr.id} is beyond the floating-point range"
            if mr.z is not None and math.isnan(mr.z):
                return f"the z of meter {mr.id} is not a number"
        for st in self.streams:
            if st.estimate is not None and not math.isfinite(st.estimate):
                return f"the estimate of stream {st.id} is beyond the floating-point range"
        for cid, cz in zip(self.constraint_ids, self.constraint_z, strict=True):
            if cz is not None and math.isnan(cz):
                return f"the nodal test of constraint {cid} is not a number"
        return None


def chi2_critical(dof: int, alpha: float = ALPHA) -> float:
    """``χ²_{1−α}(dof)``, the global test's critical value."""
    return float(stats.chi2.ppf(1.0 - alpha, dof))


def sidak_z_critical(n: int, alpha: float = ALPHA) -> float:
    """Šidák-corrected two-sided critical value for ``n`` simultaneous measurement tests.

    ``β = 1 − (1 − α)^{1/n}``, ``z_crit = Φ⁻¹(1 − β/2)``; for ``n = 28``, ``α = 0.05``: 3.12.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    beta = 1.0 - (1.0 - alpha) ** (1.0 / n)
    return float(stats.norm.ppf(1.0 - beta / 2.0))


def _as_matrix(a: npt.ArrayLike, rows: int | None = None) -> FloatArray:
    m = np.asarray(a, dtype=np.float64)
    if m.ndim == 1 and m.size == 0 and rows is not None:
        m = m.reshape(rows, 0)
    if m.ndim != 2:
        raise ValueError("constraint matrices must be 2-D")
    return m


def _row_basis(b: FloatArray) -> FloatArray:
    """Orthonormal rows spanning the row space of ``b`` (an ``r × n`` matrix, r = rank)."""
    if b.size == 0:
        return np.zeros((0, b.shape[1]))
    _, s, vt = np.linalg.svd(b, full_matrices=False)
    if s.size == 0 or s[0] == 0.0:
        return np.zeros((0, b.shape[1]))
    rank = int(np.sum(s > RANK_TOL * s[0]))
    return np.asarray(vt[:rank], dtype=np.float64)


def _left_null_projection(a_u: FloatArray) -> FloatArray:
    """``P`` with orthonormal rows and ``P·A_u = 0`` (identity when there is no ``A_u``)."""
    m = a_u.shape[0]
    if a_u.shape[1] == 0 or not np.any(a_u):
        return np.eye(m)
    p = linalg.null_space(a_u.T, rcond=RANK_TOL)
    return np.asarray(p, dtype=np.float64).T


def _observable(a_u: FloatArray) -> npt.NDArray[np.bool_]:
    """Unmeasured streams whose value the constraints fix (null space of ``A_u`` misses them)."""
    p = a_u.shape[1]
    if p == 0:
        return np.zeros(0, dtype=np.bool_)
    n = np.asarray(linalg.null_space(a_u, rcond=RANK_TOL), dtype=np.float64)
    if n.shape[1] == 0:
        return np.ones(p, dtype=np.bool_)
    return np.asarray(np.linalg.norm(n, axis=1) <= REDUNDANCY_TOL, dtype=np.bool_)


def _solve_spd(h: FloatArray, rhs: FloatArray) -> tuple[FloatArray, bool]:
    """``H⁻¹ rhs`` for symmetric positive (semi)definite ``H``; the flag says it was exact."""
    try:
        factor = linalg.cho_factor(h)
        return np.asarray(linalg.cho_solve(factor, rhs), dtype=np.float64), True
    except (np.linalg.LinAlgError, linalg.LinAlgError):
        pinv = np.linalg.pinv(h, rcond=RANK_TOL, hermitian=True)
        return np.asarray(pinv @ rhs, dtype=np.float64), False


def reconcile(
    a: npt.ArrayLike,
    y: npt.ArrayLike,
    sigma: npt.ArrayLike,
    *,
    a_unmeasured: npt.ArrayLike | None = None,
    ids: Sequence[str] | None = None,
    unmeasured_ids: Sequence[str] | None = None,
    constraint_ids: Sequence[str] | None = None,
    alpha: float = ALPHA,
) -> Reconciliation:
    """Linear steady-state data reconciliation with the global and measurement tests.

    ``a`` is the ``m × n`` matrix of the measured variables, ``y`` the ``n`` measurements and
    ``sigma`` their standard deviations (``σ ≥ 0``; a ``σ = 0`` measurement is held exact).
    ``a_unmeasured`` (``m × p``) holds the columns of unmeasured streams, eliminated by
    projection; see the module docstring for the method. ``ids``/``unmeasured_ids``/
    ``constraint_ids`` name the columns and rows (defaults ``"0"``, ``"1"``, …).

    Measurements of any finite magnitude are taken: far from 1 they are computed scaled by a
    power of two (see the module docstring), and a variance below ``NEGLIGIBLE_VARIANCE`` of
    the largest magnitude squared counts as 0 (an exact meter). It never raises for them;
    :meth:`Reconciliation.problem` names a result that is not a finite number.
    """
    y_v = np.asarray(y, dtype=np.float64).reshape(-1)
    s_v = np.asarray(sigma, dtype=np.float64).reshape(-1)
    n = y_v.size
    a_m = _as_matrix(a)
    if a_m.shape[1] != n or s_v.size != n:
        raise ValueError(f"shapes: A {a_m.shape}, y ({n},), sigma ({s_v.size},)")
    if not (np.all(np.isfinite(y_v)) and np.all(np.isfinite(s_v)) and np.all(s_v >= 0.0)):
        raise ValueError("measurements must be finite and sigmas finite and ≥ 0")
    m = a_m.shape[0]
    a_u = np.zeros((m, 0)) if a_unmeasured is None else _as_matrix(a_unmeasured, rows=m)
    if a_u.shape[0] != m:
        raise ValueError(f"A_unmeasured has {a_u.shape[0]} rows, A has {m}")
    p = a_u.shape[1]
    meter_ids = tuple(ids) if ids is not None else tuple(str(j) for j in range(n))
    stream_ids = (
        tuple(unmeasured_ids) if unmeasured_ids is not None else tuple(f"u{j}" for j in range(p))
    )
    row_ids = (
        tuple(constraint_ids) if constraint_ids is not None else tuple(str(i) for i in range(m))
    )
    if len(meter_ids) != n or len(stream_ids) != p or len(row_ids) != m:
        raise ValueError("id lists do not match the matrix shapes")

    # Computed on y and σ scaled by 2^-e (exact), results scaled back at the end.
    e = _scale_exponent([float(np.max(np.abs(y_v), initial=0.0)), float(np.max(s_v, initial=0.0))])
    y_c = np.ldexp(y_v, -e) if e else y_v
    s_c = np.ldexp(s_v, -e) if e else s_v
    var = s_c**2
    var[var < NEGLIGIBLE_VARIANCE * max(float(np.max(np.abs(y_c), initial=0.0)) ** 2, 1.0)] = 0.0
    proj = _left_null_projection(a_u)
    b = _row_basis(proj @ a_m)  # r × n, orthonormal rows: B x_m = 0
    dof = int(b.shape[0])

    if dof > 0:
        bv = b * var  # B V
        h = bv @ b.T
        resid = b @ y_c
        h_inv_r, exact = _solve_spd(h, resid)
        x_hat = y_c - bv.T @ h_inv_r
        h_inv_bv, _ = _solve_spd(h, bv)
        w = bv.T @ h_inv_bv
        statistic = float(resid @ h_inv_r)
        if not exact:
            scale = max(1.0, float(np.max(np.abs(y_c)))) if n else 1.0
            if float(np.max(np.abs(b @ x_hat))) > 1e-9 * scale:
                statistic = math.inf  # exact (σ = 0) meters contradict each other
        crit = chi2_critical(dof, alpha)
        critical: float | None = crit
        passed = statistic <= crit
    else:
        x_hat = y_c.copy()
        w = np.zeros((n, n))
        statistic = 0.0
        critical = None
        passed = True
    adjustments = y_c - x_hat

    redundant = (
        np.linalg.norm(b, axis=0) > REDUNDANCY_TOL if dof > 0 else np.zeros(n, dtype=np.bool_)
    )
    w_diag = np.diag(w).copy()
    tested = redundant & (w_diag > TEST_TOL * np.maximum(var, np.finfo(np.float64).tiny))
    n_tested = int(np.sum(tested))
    z_crit = sidak_z_critical(n_tested, alpha) if n_tested else None
    z_values: list[float | None] = [
        float(adjustments[j] / math.sqrt(w_diag[j])) if tested[j] else None for j in range(n)
    ]

    # Unmeasured streams: least squares from A_u x_u = −A_m x̂_m; observable ones only.
    streams: list[StreamResult] = []
    if p:
        observable = _observable(a_u)
        x_u, *_ = np.linalg.lstsq(a_u, -(a_m @ x_hat), rcond=None)
        for j in range(p):
            ok = bool(observable[j])
            estimate = _unscale(float(x_u[j]), e) if ok else None
            streams.append(StreamResult(stream_ids[j], estimate, ok))

    # Nodal test on the original constraints that involve measured meters only.
    constraint_z: list[float | None] = []
    r_full = a_m @ y_c
    h_diag = (a_m * var) @ a_m.T if m else np.zeros((0, 0))
    for i in range(m):
        if p and np.any(a_u[i] != 0.0):
            constraint_z.append(None)
            continue
        hv = float(h_diag[i, i])
        constraint_z.append(float(r_full[i]) / math.sqrt(hv) if hv > 0.0 else None)

    if e:
        with np.errstate(over="ignore"):
            x_hat = np.ldexp(x_hat, e)
            adjustments = np.ldexp(adjustments, e)
            w = np.ldexp(w, 2 * e)
    meters: list[MeterResult] = []
    for j in range(n):
        zj = z_values[j]
        meters.append(
            MeterResult(
                id=meter_ids[j],
                measured=float(y_v[j]),
                sigma=float(s_v[j]),
                reconciled=float(x_hat[j]),
                adjustment=float(adjustments[j]),
                z=zj,
                redundant=bool(redundant[j]),
                suspect=zj is not None and z_crit is not None and abs(zj) > z_crit,
            )
        )
    return Reconciliation(
        meters=tuple(meters),
        streams=tuple(streams),
        statistic=statistic,
        dof=dof,
        critical=critical,
        passed=bool(passed),
        alpha=alpha,
        tested=n_tested,
        z_critical=z_crit,
        constraint_ids=row_ids,
        constraint_z=tuple(constraint_z),
        reconciled=x_hat,
        adjustments=adjustments,
        adjustment_covariance=w,
    )


@dataclass(frozen=True, slots=True)
class Elimination:
    """Serial elimination: the suspects in the order eliminated and the final reconciliation.

    ``final`` covers every original meter (eliminated ones flagged ``suspect``, with their
    estimate from the remaining meters as ``reconciled``, ``None``/``nan`` in the arrays when
    the remaining meters cannot observe it) and the unmeasured streams; its global test,
    ``dof`` and ``constraint_z`` are those of the last reconciliation.
    ``steps`` are the successive reconciliations (``steps[0]`` with every meter measured,
    ``steps[-1]`` the last, over the remaining meters).
    """

    suspects: tuple[str, ...]
    final: Reconciliation
    steps: tuple[Reconciliation, ...]


def serial_elimination(
    a: npt.ArrayLike,
    y: npt.ArrayLike,
    sigma: npt.ArrayLike,
    *,
    a_unmeasured: npt.ArrayLike | None = None,
    ids: Sequence[str] | None = None,
    unmeasured_ids: Sequence[str] | None = None,
    constraint_ids: Sequence[str] | None = None,
    alpha: float = ALPHA,
    max_eliminations: int | None = None,
) -> Elimination:
    """Name the suspect meters by serial elimination.

    Reconcile; while the global test fails and some measurement is tested, move the tested
    measurement with the largest ``|z_j|`` (first in column order on a tie) to the unmeasured
    streams and reconcile again. Stops when the global test passes, when no redundancy is left
    (``dof = 0``), or after ``max_eliminations``. Non-redundant measurements have no test, so
    they are never eliminated.
    """
    y_v = np.asarray(y, dtype=np.float64).reshape(-1)
    s_v = np.asarray(sigma, dtype=np.float64).reshape(-1)
    a_m = _as_matrix(a)
    n = y_v.size
    m = a_m.shape[0]
    a_u = np.zeros((m, 0)) if a_unmeasured is None else _as_matrix(a_unmeasured, rows=m)
    meter_ids = tuple(ids) if ids is not None else tuple(str(j) for j in range(n))
    stream_ids = (
        tuple(unmeasured_ids)
        if unmeasured_ids is not None
        else tuple(f"u{j}" for j in range(a_u.shape[1]))
    )
    if len(meter_ids) != n:
        raise ValueError("ids do not match the number of measurements")

    kept = list(range(n))
    removed: list[int] = []
    steps: list[Reconciliation] = []
    while True:
        cols_u = np.concatenate([a_u, a_m[:, removed]], axis=1) if removed else a_u
        step = reconcile(
            a_m[:, kept],
            y_v[kept],
            s_v[kept],
            a_unmeasured=cols_u,
            ids=[meter_ids[j] for j in kept],
            unmeasured_ids=[*stream_ids, *(meter_ids[j] for j in removed)],
            constraint_ids=constraint_ids,
            alpha=alpha,
        )
        steps.append(step)
        if step.passed or step.tested == 0:
            break
        if max_eliminations is not None and len(removed) >= max_eliminations:
            break
        worst, worst_abs = -1, -1.0
        for pos, mr in enumerate(step.meters):
            # equal up to rounding is a tie (e.g. the two meters of a lone exchange)
            if mr.z is not None and abs(mr.z) > worst_abs + 1e-9 * max(worst_abs, 1.0):
                worst, worst_abs = pos, abs(mr.z)
        removed.append(kept.pop(worst))

    last = steps[-1]
    original_streams = set(stream_ids)
    by_id = {mr.id: mr for mr in last.meters}
    estimates = {s.id: s for s in last.streams}
    meters: list[MeterResult] = []
    for j in range(n):
        mid = meter_ids[j]
        if mid in by_id:
            mr = by_id[mid]
            meters.append(dataclasses.replace(mr, suspect=False))
        else:
            est = estimates[mid].estimate
            meters.append(
                MeterResult(
                    id=mid,
                    measured=float(y_v[j]),
                    sigma=float(s_v[j]),
                    reconciled=est,
                    adjustment=None if est is None else float(y_v[j]) - est,
                    z=None,
                    redundant=False,
                    suspect=True,
                )
            )
    x_hat = np.array([np.nan if mr.reconciled is None else mr.reconciled for mr in meters])
    final = Reconciliation(
        meters=tuple(meters),
        streams=tuple(s for s in last.streams if s.id in original_streams),
        statistic=last.statistic,
        dof=last.dof,
        critical=last.critical,
        passed=last.passed,
        alpha=alpha,
        tested=last.tested,
        z_critical=last.z_critical,
        constraint_ids=last.constraint_ids,
        constraint_z=last.constraint_z,
        reconciled=x_hat,
        adjustments=y_v - x_hat,
        adjustment_covariance=_expand(last.adjustment_covariance, kept, n),
    )
    return Elimination(
        suspects=tuple(meter_ids[j] for j in removed), final=final, steps=tuple(steps)
    )


def _expand(w: FloatArray, kept: Sequence[int], n: int) -> FloatArray:
    out = np.zeros((n, n))
    idx = np.asarray(kept, dtype=np.intp)
    if idx.size:
        out[np.ix_(idx, idx)] = w
    return out


def reconcile_network(
    constraints: Sequence[Constraint],
    measurements: Mapping[str, tuple[float, float]],
    unmeasured: Sequence[str] = (),
    *,
    alpha: float = ALPHA,
    max_eliminations: int | None = None,
) -> Elimination:
    """Reconcile a connected part of the network and name its suspect meters.

    ``measurements`` maps meter id → ``(value, σ)``; ``unmeasured`` lists the streams in the
    constraints that have no measurement. Builds ``A`` with :func:`build_system` and runs
    :func:`serial_elimination`.
    """
    ids = list(measurements)
    system = build_system(constraints, ids, unmeasured)
    return serial_elimination(
        system.a_measured,
        [measurements[k][0] for k in ids],
        [measurements[k][1] for k in ids],
        a_unmeasured=system.a_unmeasured,
        ids=ids,
        unmeasured_ids=system.unmeasured_ids,
        constraint_ids=system.constraint_ids,
        alpha=alpha,
        max_eliminations=max_eliminations,
    )
