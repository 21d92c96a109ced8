"""MetaNSUE's censored maximum likelihood: :func:`censored_mle` and its NumPy path.

The likelihood, the Newton steps with the conservative leave-n-out and the tau2 search,
vectorised over voxels (the reference of the compiled kernels of
:mod:`analysis.sdm.statistics.metansue.compiled`, which :func:`censored_mle` uses by default).
See :mod:`analysis.sdm.statistics.metansue` for the model and its sources.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.special import log_ndtr, ndtr

from analysis.sdm.progress import progress as progress_bar
from analysis.sdm.statistics.hedges import variance_coefficients
from analysis.sdm.statistics.hypothesis import hypothesis_row
from analysis.sdm.statistics.metansue.compiled import _mle_design_compiled, _mle_mean_compiled
from analysis.sdm.statistics.metansue.settings import (
    KNOWN_TOL,
    MLE_METHODS,
    MU_ZTOL,
    N_CANDIDATES,
    N_CANDIDATES_DESIGN_FAST,
    TAU2_MAX,
    TAU_RTOL,
    leave_n_out_count,
)
from analysis.sdm.statistics.wls import weighted_least_squares

LGR = logging.getLogger(__name__)

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- likelihood terms
def _interval_terms(mu, lo, up, s_lo, s_up, deriv: bool = True):
    """-ln[Phi((up-mu)/s_up) - Phi((lo-mu)/s_lo)] and its first two derivatives in ``mu``.

    Numerically stable in the tails (reflection so that the upper argument is <= 0 where
    needed, and ``log_ndtr`` where the probability is tiny).
    """
    a = (lo - mu) / s_lo
    b = (up - mu) / s_up
    flip = a > 0
    hi = np.where(flip, -a, b)
    low = np.where(flip, -b, a)
    z = ndtr(hi) - ndtr(low)
    small = z < 1e-10
    with np.errstate(divide="ignore", invalid="ignore"):
        logz = np.log(z)
        if small.any():
            lh, ll = log_ndtr(hi[small]), log_ndtr(low[small])
            logz[small] = lh + np.log1p(-np.exp(np.minimum(ll - lh, 0.0)))
    valid = np.isfinite(logz) & (b > a)
    # outside the valid region (only possible with two different scales) a flat barrier
    logz = np.where(valid, logz, -1e4)
    f = -logz
    if not deriv:
        return f
    with np.errstate(invalid="ignore", over="ignore"):  # masked by ``valid`` below
        ra = np.exp(np.minimum(-0.5 * a * a - _LOG_SQRT_2PI - logz, 700.0))
        rb = np.exp(np.minimum(-0.5 * b * b - _LOG_SQRT_2PI - logz, 700.0))
        d1 = np.where(valid, rb / s_up - ra / s_lo, 0.0)
        d2 = np.where(valid, b * rb / (s_up * s_up) - a * ra / (s_lo * s_lo) + d1 * d1, 0.0)
    return f, d1, np.maximum(d2, 0.0)


def _study_terms(mu, y, known, lo, up, v_known, s_lo, s_up, deriv=True):
    """Per-study objective (and derivatives) at ``mu``: (k, N) arrays."""
    r = mu - y
    fk = 0.5 * r * r / v_known
    if not deriv:
        fc = _interval_terms(mu, lo, up, s_lo, s_up, deriv=False)
        return np.where(known, fk, fc)
    fc, gc, hc = _interval_terms(mu, lo, up, s_lo, s_up)
    f = np.where(known, fk, fc)
    g = np.where(known, r / v_known, gc)
    h = np.where(known, 1.0 / v_known, hc)
    return f, g, h


class _Problem:
    """Bounds of a block of voxel columns prepared for the coefficient likelihood."""

    def __init__(self, lower, upper, k1, k2, X):
        self.lo = np.asarray(lower, dtype=float)
        self.up = np.asarray(upper, dtype=float)
        self.known = np.abs(self.up - self.lo) < KNOWN_TOL
        self.y = np.where(self.known, 0.5 * (self.lo + self.up), 0.0)
        k1c, k2c = k1[:, None], k2[:, None]
        self.k1, self.k2 = k1c, k2c
        self.v_known = np.where(self.known, k1c + k2c * self.y ** 2, 1.0)
        self.v_lo = k1c + k2c * self.lo ** 2
        self.v_up = k1c + k2c * self.up ** 2
        self.s_lo = np.sqrt(self.v_lo)
        self.s_up = np.sqrt(self.v_up)
        self.X = X
        self.simple = X.shape[1] == 1 and np.all(X == 1)

    def mu(self, beta):
        return self.X @ beta.T  # (k, N)

    def terms(self, beta, deriv=True):
        # bound-specific scales (see the module docstring); Newton steps are halved until the
        # objective decreases, which also keeps them where every censored probability is > 0
        return _study_terms(self.mu(beta), self.y, self.known, self.lo, self.up,
                            self.v_known, self.s_lo, self.s_up, deriv)

    def objective(self, beta, act):
        return (act * self.terms(beta, deriv=False)).sum(0)


def _grad_hess(prob: _Problem, g, h, act):
    X = prob.X
    ga, ha = act * g, act * h
    if prob.simple:
        return ga.sum(0)[:, None], ha.sum(0)[:, None, None]
    G = np.einsum("kp,kn->np", X, ga)
    H = np.einsum("kp,kn,kq->npq", X, ha, X)
    return G, H


def _newton(prob: _Problem, beta, act, max_iter=50, tol=1e-10):
    """Minimise sum_i act_i f_i(x_i' beta) per column by damped Newton (convex in practice)."""
    beta = beta.copy()
    p = beta.shape[1]
    ridge = 1e-12 * np.eye(p)
    cols = np.arange(beta.shape[0])
    f_old = None
    for _ in range(max_iter):
        if cols.size == 0:
            break
        sub = _sub(prob, cols)
        a = act[:, cols]
        f, g, h = sub.terms(beta[cols])
        G, H = _grad_hess(sub, g, h, a)
        try:
            step = -np.linalg.solve(H + ridge, G[..., None])[..., 0]
        except np.linalg.LinAlgError:  # a flat direction (e.g. a covariate constant among
            # the studies that are informative at some voxels): minimum-norm Newton step
            step = -(np.linalg.pinv(H + ridge) @ G[..., None])[..., 0]
        f_cur = (a * f).sum(0)
        f_old = f_cur
        t = np.ones(cols.size)
        new = beta[cols] + step
        for _half in range(30):
            f_new = sub.objective(new, a)
            bad = ~(f_new <= f_old + 1e-12 * np.abs(f_old)) & (t > 1e-9)
            if not bad.any():
                break
            t = np.where(bad, t * 0.5, t)
            new = np.where(bad[:, None], beta[cols] + t[:, None] * step, new)
        moved = np.max(np.abs(new - beta[cols]), axis=1)
        beta[cols] = new
        cols = cols[moved > tol]
    return beta


def _sub(prob: _Problem, cols) -> _Problem:
    out = object.__new__(_Problem)
    for name in ("lo", "up", "known", "y", "v_known", "v_lo", "v_up", "s_lo", "s_up"):
        setattr(out, name, getattr(prob, name)[:, cols])
    out.k1, out.k2, out.X, out.simple = prob.k1, prob.k2, prob.X, prob.simple
    return out


def _start(prob: _Problem, act) -> np.ndarray:
    """WLS start with midpoints for censored studies and weights 1/v(midpoint)
    (:func:`analysis.sdm.statistics.wls.weighted_least_squares`; a ridge of 1e-9 keeps designs
    solvable where left-out studies make them singular).
    """
    mid = 0.5 * (prob.lo + prob.up)
    w = act / (prob.k1 + prob.k2 * mid ** 2)
    if prob.simple:
        return weighted_least_squares(mid, w)[0]
    return weighted_least_squares(mid, w, prob.X, ridge=1e-9)[0]


def _coef_mle(prob: _Problem, C, n_out: int):
    """Coefficient MLE with greedy conservative leave-n-out (vectorised over columns): every
    active study is refitted exactly in every round, from its one-step estimate.
    """
    k, n = prob.lo.shape
    act = np.ones((k, n))
    beta = _newton(prob, _start(prob, act), act)
    discarded = np.full((n_out, n), -1, dtype=np.int16)
    cols = np.arange(n)
    for rnd in range(n_out):
        crit, delta = _one_step_leave_one_out(prob, beta, act, C)
        best_val = np.full(n, np.inf)
        best_beta = beta.copy()
        best_i = np.full(n, -1)
        for cand in range(k):
            ok = act[cand] > 0
            if not ok.any():
                continue
            a2 = act.copy()
            a2[cand] = 0.0
            b0 = beta + delta[cand]
            b0 = np.where(np.isfinite(b0), b0, beta)
            bc = _newton(prob, b0, a2)
            val = np.abs(bc @ C)
            better = ok & (val < best_val)
            best_val = np.where(better, val, best_val)
            best_beta[better] = bc[better]
            best_i = np.where(better, cand, best_i)
        take = best_i >= 0
        act[best_i[take], cols[take]] = 0.0
        discarded[rnd, take] = best_i[take]
        beta = np.where(take[:, None], best_beta, beta)
    return beta, discarded


def _one_step_leave_one_out(prob: _Problem, beta, act, C):
    """One Newton step (Sherman-Morrison) from the full fit for every left-out study."""
    X = prob.X
    _, g, h = prob.terms(beta)
    _, H = _grad_hess(prob, g, h, act)
    hinv = np.linalg.inv(H + 1e-12 * np.eye(X.shape[1]))
    a_i = np.einsum("npq,kq->knp", hinv, X)  # H^-1 x_i
    lev = np.einsum("kp,knp->kn", X, a_i)
    denom = 1.0 - h * lev
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (g / denom)[..., None] * a_i  # (k, n, p)
    crit = np.abs((beta[None] + delta) @ C)
    crit = np.where((act > 0) & (denom > 1e-8) & np.isfinite(crit), crit, np.inf)
    return crit, delta


def _tau2_objective(tau2, mu, prob: _Problem):
    """-l(tau2) summed over studies for fixed mu, (N,)."""
    t = tau2[None, :]
    vk = prob.v_known + t
    r = prob.y - mu
    fk = 0.5 * (np.log(vk) + r * r / vk)
    fc = _interval_terms(mu, prob.lo, prob.up, np.sqrt(prob.v_lo + t), np.sqrt(prob.v_up + t),
                         deriv=False)
    return np.where(prob.known, fk, fc).sum(0)


def _tau2_mle(prob: _Problem, mu, n_grid: int = 14, n_golden: int = 28):
    """1-D minimisation over [0, 999]: log-spaced grid on tau, then golden section."""
    n = mu.shape[1]
    taus = np.concatenate([[0.0], np.geomspace(1e-3, math.sqrt(TAU2_MAX), n_grid - 1)])
    vals = np.stack([_tau2_objective(np.full(n, t * t), mu, prob) for t in taus])
    i = np.argmin(vals, axis=0)
    lo = taus[np.maximum(i - 1, 0)]
    hi = taus[np.minimum(i + 1, len(taus) - 1)]
    gr = (math.sqrt(5.0) - 1.0) / 2.0
    c = hi - gr * (hi - lo)
    d = lo + gr * (hi - lo)
    fc = _tau2_objective(c * c, mu, prob)
    fd = _tau2_objective(d * d, mu, prob)
    for _ in range(n_golden):
        left = fc < fd
        hi = np.where(left, d, hi)
        lo = np.where(left, lo, c)
        d_new = np.where(left, c, lo + gr * (hi - lo))
        c_new = np.where(left, hi - gr * (hi - lo), d)
        fd_new = np.where(left, fc, np.nan)
        fc_new = np.where(left, np.nan, fd)
        # evaluate the one new point per column
        x_new = np.where(left, c_new, d_new)
        f_new = _tau2_objective(x_new * x_new, mu, prob)
        fc = np.where(left, f_new, fc_new)
        fd = np.where(left, fd_new, f_new)
        c, d = c_new, d_new
    tau = 0.5 * (lo + hi)
    # the grid point itself may be better (e.g. the boundary tau2 = 0)
    f_tau = _tau2_objective(tau * tau, mu, prob)
    f_grid = vals[i, np.arange(n)]
    tau = np.where(f_grid < f_tau, taus[i], tau)
    return tau * tau


def _column_hash(words: np.ndarray) -> np.ndarray:
    """64-bit hash of every row of ``words`` (unsigned integers): per word an XOR, a
    multiplication by an odd constant (2^64 / golden ratio) and an xor-shift, so that
    positions and bits mix (a plain weighted sum of the words collides on bound maps, whose
    neighbouring floats differ by small integers in their bit patterns).
    """
    h = np.full(len(words), 0xCBF29CE484222325, dtype=np.uint64)
    for j in range(words.shape[1]):
        h ^= words[:, j].astype(np.uint64)
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return h


def distinct_columns(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct columns of ``a`` (equal bit for bit), as ``np.unique(a.T, axis=0)`` finds
    them but in another order and several times faster.

    Every column is hashed to 64 bits (:func:`_column_hash`) and the hashes are sorted; the
    columns that share a hash are then checked word for word against the first of them, and
    only if two different columns share one (a collision) does the search fall back to
    ``np.unique``.

    Returns
    -------
    first : ndarray of int
        Index of one column of each distinct pattern.
    inverse : ndarray of int, shape (a.shape[1],)
        ``a[:, first[inverse]]`` equals ``a``.
    """
    cols = np.ascontiguousarray(np.asarray(a).T)
    words = cols.view(np.uint8).reshape(len(cols), -1)
    if words.shape[1] % 4 == 0:
        words = cols.view(np.uint32).reshape(len(cols), -1)
    _, first, inverse = np.unique(_column_hash(words), return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if not np.array_equal(words[first[inverse]], words):  # a collision
        LGR.debug("distinct_columns: a hash collision; np.unique instead")
        _, first, inverse = np.unique(words, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
    return first, inverse


def censored_mle(lower, upper, n1, n2=None, X=None, C=None, *, leave_n_out="auto",
                 chunk: int = 8192, compress: bool = True, progress: bool = False,
                 compiled: bool = True, method: str = "fast") -> dict:
    """Per-voxel MetaNSUE maximum-likelihood estimates.

    Parameters
    ----------
    lower, upper : ndarray, shape (k, V)
        Bound maps (Hedges g); known effects have ``lower == upper``.
    n1, n2 : array-like, shape (k,)
        Sample sizes (``n2`` NaN for one-sample studies).
    X : ndarray, shape (k, p), optional
        Design (default intercept only). C : array-like (p,), hypothesis row (default
        first coefficient) used by the conservative leave-n-out.
    leave_n_out : "auto", "metansue" or int
        See :func:`leave_n_out_count` (config ``sdm.leave_n_out``).
    chunk : int
        Distinct bound patterns solved at once (memory; the progress unit).
    compress : bool
        Solve each distinct bound pattern once.
    compiled : bool
        Use the compiled (numba) per-voxel kernels, parallel over voxels: intercept-only
        models :func:`_mle_mean_kernel`, every other design :func:`_mle_design_kernel` (the
        mathematics of the NumPy path). ``False`` forces the vectorised NumPy path (the
        reference of both, always exact).
    method : {"fast", "exact"}
        Compiled kernels only. ``"exact"``: tau2 by a fixed number of golden-section steps
        (24 intercept-only, 28 with a design) and every active study of a design refitted in
        every leave-n-out round. ``"fast"`` (default): tau2 by Brent's method to the relative
        tolerance :data:`~analysis.sdm.statistics.metansue.settings.TAU_RTOL` on tau, and the
        leave-n-out candidates of a design ranked by their one-step estimates: the
        :data:`~analysis.sdm.statistics.metansue.settings.N_CANDIDATES_DESIGN_FAST` most
        promising refitted, the others only while a lower bound can still win; on both kernels
        a round's search ends once a refit's ``|C' beta|`` is within
        :data:`~analysis.sdm.statistics.metansue.settings.MU_ZTOL` standard errors of 0. The
        intercept-only kernel's candidate ranking is otherwise the same on both paths. Measured
        against ``"exact"`` (50 imputations, the z maps): see
        :mod:`analysis.sdm.statistics.metansue`.

    Returns
    -------
    dict
        ``beta`` (V, p) coefficients after leave-n-out, ``mu`` property via ``X @ beta``,
        ``tau2`` (V,), ``discarded`` (n_out, V) indices of the discarded studies (-1: none),
        ``n_leave_out`` (int).
    """
    if method not in MLE_METHODS:
        raise ValueError(f"method must be one of {MLE_METHODS}, not {method!r}")
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of columns, not {chunk}")
    lower = np.asarray(lower)
    upper = np.asarray(upper)
    k, nv = lower.shape
    k1, k2 = variance_coefficients(n1, n2)
    X = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
    p = X.shape[1]
    C = hypothesis_row(C, p)
    n_out = leave_n_out_count(k, leave_n_out)
    if compress:
        both = np.concatenate([lower, upper], axis=0)
        first, inverse = distinct_columns(both)
        uniq = both[:, first]
        lo_u, up_u = uniq[:k].astype(float), uniq[k:].astype(float)
        LGR.info("MLE: %d voxels, %d distinct bound patterns", nv, len(first))
    else:
        lo_u, up_u, inverse = lower.astype(float), upper.astype(float), None
    nu = lo_u.shape[1]
    fast = method == "fast"
    simple = compiled and p == 1 and np.all(X == 1)
    beta = np.empty((nu, p))
    tau2 = np.empty(nu)
    disc = np.empty((n_out, nu), dtype=np.int16)
    starts = range(0, nu, chunk)
    for s in progress_bar(starts, desc="MetaNSUE MLE", unit="block", disable=not progress,
                          logger=LGR):
        sl = slice(s, min(s + chunk, nu))
        if simple:
            beta[sl], tau2[sl], disc[:, sl] = _mle_mean_compiled(
                lo_u[:, sl], up_u[:, sl], k1, k2, n_out,
                N_CANDIDATES, TAU_RTOL if fast else 0.0, mu_ztol=MU_ZTOL if fast else 0.0)
        elif compiled:
            beta[sl], tau2[sl], disc[:, sl] = _mle_design_compiled(
                lo_u[:, sl], up_u[:, sl], k1, k2, X, C, n_out,
                n_cand=N_CANDIDATES_DESIGN_FAST if fast else -1, tau_rtol=TAU_RTOL if fast else 0.0,
                mu_ztol=MU_ZTOL if fast else 0.0)
        else:
            prob = _Problem(lo_u[:, sl], up_u[:, sl], k1, k2, X)
            b, d = _coef_mle(prob, C, n_out)
            beta[sl], disc[:, sl] = b, d
            tau2[sl] = _tau2_mle(prob, prob.mu(b))
    if inverse is not None:
        beta, tau2, disc = beta[inverse], tau2[inverse], disc[:, inverse]
    return {"beta": beta, "tau2": tau2, "discarded": disc, "n_leave_out": n_out, "X": X,
            "C": C}
