"""Straightforward per-voxel reference implementation of the engine's statistics (an oracle).

Loops over voxels and uses :mod:`scipy.optimize` directly, following the formulas of MetaNSUE
(Radua et al. 2015; ``metansue`` R package) and of REML random effects (Viechtbauer 2005)
without any of the fast path's tricks (no vectorisation, no unique-pattern compression, no
one-step leave-one-out approximation: every leave-one-out candidate is refitted). Used by the
tests on small masks to check :mod:`analysis.sdm.statistics.metansue` and the statistics core
(:mod:`analysis.sdm.statistics`), and by the benchmark for the speed ratio. Slow by design.

It is deliberately independent of the statistics core: REML tau2 by direct bounded
maximisation of the restricted likelihood (:func:`reml_voxel`, not the core's Newton/Fisher
iteration), the random-effects mean and Rubin's rules written out per voxel
(:func:`meta_voxel`). Only the definition of the Hedges-g variance is shared
(:mod:`analysis.sdm.statistics.hedges`).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import optimize
from scipy.stats import norm

from analysis.sdm.statistics.hedges import g_variance, variance_coefficients
from analysis.sdm.statistics.metansue.settings import KNOWN_TOL, TAU2_MAX, leave_n_out_count

LGR = logging.getLogger(__name__)


def _negll_coef(beta, X, lo, up, k1, k2, keep):
    mu = X[keep] @ beta
    lo, up, k1, k2 = lo[keep], up[keep], k1[keep], k2[keep]
    known = np.abs(up - lo) < KNOWN_TOL
    y = lo
    v = k1 + k2 * y * y
    out = 0.5 * np.sum((y[known] - mu[known]) ** 2 / v[known])
    s_up = np.sqrt(k1 + k2 * up * up)
    s_lo = np.sqrt(k1 + k2 * lo * lo)  # bound-specific scales
    c = ~known
    pr = _interval_prob((lo[c] - mu[c]) / s_lo[c], (up[c] - mu[c]) / s_up[c])
    return out - np.sum(np.log(np.maximum(pr, 1e-300)))


def _interval_prob(a, b):
    """Phi(b) - Phi(a), from the upper tail where both arguments are positive (no cancellation
    of two probabilities close to 1).
    """
    return np.where(a > 0, norm.sf(a) - norm.sf(b), norm.cdf(b) - norm.cdf(a))


def _mean_interval(lo, up, k1, k2):
    """[min lower, max upper], narrowed to where every censored probability
    Phi((up - mu)/s_up) - Phi((lo - mu)/s_lo) is positive.
    """
    a, b = lo.min(), up.max()
    c = np.abs(up - lo) >= KNOWN_TOL
    s_lo, s_up = np.sqrt(k1 + k2 * lo * lo)[c], np.sqrt(k1 + k2 * up * up)[c]
    slope = 1.0 / s_lo - 1.0 / s_up
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = (lo[c] / s_lo - up[c] / s_up) / slope
    room = 1e-6 * (1.0 + np.abs(cross))
    lo_side = slope > 1e-12
    hi_side = slope < -1e-12
    a2 = max(a, np.max(cross[lo_side] + room[lo_side], initial=-np.inf))
    b2 = min(b, np.min(cross[hi_side] - room[hi_side], initial=np.inf))
    return (a2, b2) if a2 <= b2 else (a, b)


def _fit_coef(X, lo, up, k1, k2, keep):
    if X.shape[1] == 1:
        a, b = _mean_interval(lo[keep], up[keep], k1[keep], k2[keep])
        if b - a < 1e-12:
            return np.array([a])
        res = optimize.minimize_scalar(lambda m: _negll_coef(np.array([m]), X, lo, up, k1, k2,
                                                             keep),
                                       bounds=(a, b), method="bounded",
                                       options={"xatol": 1e-10})
        return np.array([res.x])
    mid = 0.5 * (lo + up)
    w = keep / (k1 + k2 * mid * mid)
    b0 = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * mid))
    res = optimize.minimize(_negll_coef, b0, args=(X, lo, up, k1, k2, keep), method="BFGS",
                            options={"gtol": 1e-9})
    return res.x


def mle_voxel(lo, up, n1, n2=None, X=None, C=None, leave_n_out="auto") -> dict:
    """MetaNSUE MLE at one voxel (coefficients with greedy leave-n-out by refits, then tau2)."""
    lo = np.asarray(lo, dtype=float)
    up = np.asarray(up, dtype=float)
    k = lo.size
    k1, k2 = variance_coefficients(n1, n2)
    X = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
    C = np.eye(X.shape[1])[0] if C is None else np.asarray(C, dtype=float)
    keep = np.ones(k, dtype=bool)
    beta = _fit_coef(X, lo, up, k1, k2, keep)
    discarded = []
    for _ in range(leave_n_out_count(k, leave_n_out)):
        best = (np.inf, None, None)
        for i in np.flatnonzero(keep):
            kk = keep.copy()
            kk[i] = False
            if np.linalg.matrix_rank(X[kk]) < X.shape[1]:
                continue
            b = _fit_coef(X, lo, up, k1, k2, kk)
            if abs(C @ b) < best[0]:
                best = (abs(C @ b), i, b)
        if best[1] is None:
            break
        keep[best[1]] = False
        beta = best[2]
        discarded.append(best[1])
    mu = X @ beta
    known = np.abs(up - lo) < KNOWN_TOL

    def negll_tau2(t2):
        v = k1 + k2 * lo * lo + t2
        f = 0.5 * np.sum(np.log(v[known]) + (lo[known] - mu[known]) ** 2 / v[known])
        c = ~known
        s_lo = np.sqrt(k1[c] + k2[c] * lo[c] ** 2 + t2)
        s_up = np.sqrt(k1[c] + k2[c] * up[c] ** 2 + t2)
        pr = _interval_prob((lo[c] - mu[c]) / s_lo, (up[c] - mu[c]) / s_up)
        return f - np.sum(np.log(np.maximum(pr, 1e-300)))

    # global search: fine grid in tau then bounded Brent around the best grid point
    taus = np.concatenate([[0.0], np.geomspace(1e-3, np.sqrt(TAU2_MAX), 200)])
    vals = [negll_tau2(t * t) for t in taus]
    j = int(np.argmin(vals))
    a, b = taus[max(j - 1, 0)], taus[min(j + 1, len(taus) - 1)]
    res = optimize.minimize_scalar(lambda t: negll_tau2(t * t), bounds=(a, b), method="bounded",
                                   options={"xatol": 1e-9})
    tau = res.x if res.fun <= vals[j] else taus[j]
    return {"beta": beta, "tau2": tau * tau, "discarded": discarded}


def reml_voxel(y, v, X=None) -> float:
    """REML tau2 at one voxel by direct maximisation of the restricted likelihood."""
    y = np.asarray(y, dtype=float)
    v = np.asarray(v, dtype=float)
    X = np.ones((y.size, 1)) if X is None else np.asarray(X, dtype=float).reshape(y.size, -1)

    def nll(t2):
        w = 1.0 / (v + t2)
        xtwx = X.T @ (w[:, None] * X)
        beta = np.linalg.solve(xtwx, X.T @ (w * y))
        r = y - X @ beta
        return 0.5 * (np.sum(np.log(v + t2)) + np.linalg.slogdet(xtwx)[1] + np.sum(w * r * r))

    res = optimize.minimize_scalar(nll, bounds=(0.0, 100.0), method="bounded",
                                   options={"xatol": 1e-12})
    return float(res.x) if res.fun < nll(0.0) else 0.0


def mle_map(lower, upper, n1, n2=None, X=None, C=None, leave_n_out="auto") -> dict:
    """:func:`mle_voxel` at every voxel (loop) -> ``beta`` (V, p), ``tau2`` (V,)."""
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    res = [mle_voxel(lower[:, j], upper[:, j], n1, n2, X, C, leave_n_out)
           for j in range(lower.shape[1])]
    return {"beta": np.array([r["beta"] for r in res]),
            "tau2": np.array([r["tau2"] for r in res])}


def meta_voxel(imputed, n1, n2=None) -> dict:
    """Intercept-only REML model of each imputation at one voxel, pooled with Rubin's rules.

    ``imputed`` is (m, k); returns ``g, var, z, tau2, i2`` (fraction) for the voxel.
    """
    imputed = np.asarray(imputed, dtype=float)
    m, k = imputed.shape
    coef, var, tau, isq = [], [], [], []
    for j in range(m):
        y = imputed[j]
        v = g_variance(y, n1, n2)
        t2 = reml_voxel(y, v)
        w = 1.0 / (v + t2)
        coef.append(np.sum(w * y) / np.sum(w))
        var.append(1.0 / np.sum(w))
        wf = 1.0 / v
        h2 = 1.0 + t2 * (wf.sum() - (wf * wf).sum() / wf.sum()) / (k - 1)
        tau.append(np.sqrt(t2))
        isq.append(np.sqrt(max(0.0, 1.0 - 1.0 / h2)))
    coef = np.array(coef)
    g = coef.mean()
    tot = np.mean(var) + (1.0 + 1.0 / m) * coef.var(ddof=1)
    return {"g": g, "var": tot, "z": g / np.sqrt(tot), "tau2": np.mean(tau) ** 2,
            "i2": np.mean(isq) ** 2}


def reference_meta(lower, upper, n1, n2=None, imputations: int = 10, rng=None,
                   leave_n_out="auto") -> dict:
    """Whole per-voxel pipeline, straightforwardly: MLE (:func:`mle_voxel`), independent
    truncated-normal imputations (``scipy.stats.truncnorm``, no spatial correlation), REML and
    Rubin per voxel (:func:`meta_voxel`). Loops over voxels; for checks and the speed ratio.
    """
    from scipy.stats import truncnorm

    rng = np.random.default_rng(0) if rng is None else rng
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    k, nv = lower.shape
    n2a = None if n2 is None else np.asarray(n2, dtype=float)
    out = {key: np.empty(nv) for key in ("g", "var", "z", "tau2", "i2")}
    for col in range(nv):
        lo, up = lower[:, col], upper[:, col]
        mle = mle_voxel(lo, up, n1, n2a, leave_n_out=leave_n_out)
        mu = float(mle["beta"][0])
        imp = np.empty((imputations, k))
        for i in range(k):
            if abs(up[i] - lo[i]) < KNOWN_TOL:
                imp[:, i] = lo[i]
                continue
            n2i = None if n2a is None else n2a[i]
            sd = np.sqrt(g_variance(mu, n1[i], n2i) + mle["tau2"])
            imp[:, i] = truncnorm.rvs((lo[i] - mu) / sd, (up[i] - mu) / sd, loc=mu, scale=sd,
                                      size=imputations, random_state=rng)
        res = meta_voxel(imp, np.asarray(n1, float), n2a)
        for key in out:
            out[key][col] = res[key]
    return out
