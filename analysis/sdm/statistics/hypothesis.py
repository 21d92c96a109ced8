"""The hypothesis (contrast) row of a model and the contrast of fitted coefficients.

SDM-PSI tests one linear combination ``C' beta`` of the coefficients of ``[intercept,
covariates...]``: the mean (``C = (1, 0, ...)``, the default), a slope (``(0, 1, 0, ...)``) or
any row written as SDM-PSI writes it (``"0+1+0"``). Its estimate is ``C' beta`` and its variance
``C' Cov(beta) C``.
"""

from __future__ import annotations

import numpy as np


def hypothesis_row(hypothesis, p: int) -> np.ndarray:
    """The hypothesis row over ``p`` design columns.

    Parameters
    ----------
    hypothesis : None, str or array-like
        ``None`` (the first coefficient: the intercept), SDM-PSI's ``"0+1+0"`` (``+`` or ``,``
        between the entries) or a sequence of ``p`` numbers.
    p : int
        Number of design columns.

    Returns
    -------
    ndarray, shape (p,)

    Raises
    ------
    ValueError
        The row does not have ``p`` entries.
    """
    if hypothesis is None:
        C = np.zeros(p)
        C[0] = 1.0
        return C
    if isinstance(hypothesis, str):
        hypothesis = [float(x) for x in hypothesis.replace(",", "+").split("+") if x.strip()]
    C = np.asarray(hypothesis, dtype=float).ravel()
    if C.size != p:
        raise ValueError(f"hypothesis has {C.size} entries but the design has {p} columns")
    return C


def contrast(beta, cov, C, xp=np) -> tuple:
    """``C' beta`` and ``C' Cov C`` of fitted coefficients.

    Parameters
    ----------
    beta : array, shape (..., p)
    cov : array, shape (..., p, p)
    C : array-like, shape (p,)
    xp : module
        Array module of ``beta`` and ``cov``.

    Returns
    -------
    coef, var : array, shape (...)
    """
    C = xp.asarray(C, dtype=xp.float64)
    return beta @ C, xp.einsum("p,...pq,q->...", C, cov, C)
