"""MetaNSUE per voxel: censored maximum likelihood and multiple imputation of study images.

At every voxel a study's effect is either *known* (``lower == upper``, e.g. at a reported peak
with a t value) or *censored*: only known to lie in ``[lower, upper]`` (a non-statistically
significant unreported effect, NSUE). Following MetaNSUE (Radua et al. 2015, JAMA Psychiatry;
Albajes-Eizagirre, Solanes & Radua 2019, Stat Methods Med Res; R package ``metansue``) and
SDM-PSI (Albajes-Eizagirre et al. 2019, NeuroImage 186:174-184):

1. coefficients ``beta`` of ``mu_i = x_i' beta`` by maximum likelihood with tau2 = 0::

       -l(beta) = 1/2 sum_known (y_i - mu_i)^2 / v(y_i)
                  - sum_cens ln[Phi((up_i - mu_i)/s_up,i) - Phi((lo_i - mu_i)/s_lo,i)]

   with **bound-specific** scales ``s_lo = sqrt(v(lo_i))``, ``s_up = sqrt(v(up_i))`` (the
   censored likelihood proper, and the one ``metansue`` itself uses for tau2; ``metansue`` 2.6
   uses ``s_up`` for both bounds of the coefficient step). Evidence, SDM-PSI v6.21's own bound
   maps of Enge et al. (2021), 50 studies, 50 imputations, against SDM-PSI's ``mod1`` maps on
   1,662 voxels (300 strongest, the 7 reported peaks and their 26 neighbours, 1,200 random),
   two seeds each: r(z) 0.975/0.976 -> 0.978/0.979, mean z difference -0.35 -> -0.11, largest
   |dz| at the 7 peaks 2.19/1.73 -> 0.82/0.88; full mask (193,768 voxels): r(z) 0.947 ->
   0.949/0.950, largest |dz| at the peaks 1.95 -> 0.88/0.75 (two seeds of the same settings
   agree to r(z) 0.995, the Monte-Carlo noise floor). With two scales the probability changes sign
   far out on the side of the smaller scale: mu is searched only where every censored
   probability is positive (a barrier of the objective). Then the *conservative leave-n-out*
   (``metansue``): ``n`` times, the study whose removal brings the hypothesis ``|C beta|``
   closest to 0 is discarded (ties: the lower study index). The greedy choice is exact: every
   candidate that could win is refitted (see :func:`_mle_mean_kernel`);
2. tau2 by 1-D maximum likelihood over ``[0, 999]`` with ``mu`` fixed (bound-specific
   variances ``v(bound) + tau2``);
3. imputation of ``m`` study images: at censored voxels a draw from the normal
   ``N(mu_i, v(mu_i) + tau2)`` truncated to ``[lo, up]``, by the inverse CDF of a spatially
   correlated uniform field (``U = Phi(F)``, ``F`` a standardised Gaussian-smoothed white-noise
   field), a simple re-implementation of the spatially correlated imputation the PSI paper
   describes (Albajes-Eizagirre et al. 2019) -- SDM-PSI's own variance-targeting smoother is
   not public. Known voxels are copied.

Intercept-only models use a compiled per-voxel kernel (safeguarded Newton for beta, a grid
and a one-dimensional search for tau2). Its Newton steps and leave-n-out ranking take the
derivatives of a censored study's term without its logarithm (``phi(a) / Z`` directly, where
``Z`` has no cancellation), and a Newton step shorter than the tolerance ends the search (before,
a step that rounded to the bracket's end sent the search to the far midpoint of the bracket,
where it could end at another stationary point: 31 of 30,000 random voxels of SDM-PSI's bound
maps of the first 11 studies of Enge et al. 2021, |d beta| up to 0.078 from the per-voxel
reference, when the derivatives were changed at the 1e-16 level). Against the former kernel on
those 30,000 voxels, 11 and 50 studies: |d beta| <= 1e-11, |d tau2| <= 5e-7, and 1.45 and 1.6
times faster (0.88 s to 0.61 s, 4.86 s to 3.04 s, 2 threads). Other designs use a compiled
per-voxel kernel (:func:`_mle_design_kernel`) with the mathematics of the NumPy path vectorised over voxels
(``compiled=False``, the reference): damped Newton with step halving and a minimum-norm step
where the Hessian is singular, every active study refitted in every leave-n-out round, the same
tau2 grid and golden section. Voxels with identical bound patterns are solved once
(unique-column compression).

The two paths agree to rounding: 11-study data with ``[1, mean age]`` (10 studies, 193,768
voxels) |d beta| <= 6e-15, |d tau2| <= 7e-7; SDM-PSI's bound maps of Enge et al. (2021) with 4
covariates (50 studies, 8,192 random voxels) |d beta| <= 3e-14, |d tau2| <= 2e-7. The discarded
studies differ only at exact ties of ``|C' beta|`` (two identical studies, or ``C' beta = 0`` to
rounding), decided by rounding in either path with the same beta (496 and 6 of those voxels).
Where a discarded study leaves the kept studies' design rank-deficient (e.g. an indicator
covariate of that study alone) the coefficient of the flat direction is not identified: both
paths keep its one-step start, which rounding dominates there, so it (and tau2 through the
discarded study's mu) differs between them while ``C' beta`` and the kept studies' mu agree.
Time with 2 threads (NumPy path: one), measured beside other work: 11-study data 17 s vs 49 s
(one thread 35 s); Enge et al. 23 s vs 78 s per 8,192 voxels, the whole mask 520 s (NumPy path
about 1,850 s, extrapolated). Per thread the gain is 1.4-1.7 times: both paths evaluate the
same likelihood terms (two normal CDFs, a log and two exponentials per censored study and
Newton step); the kernel adds the parallelism over voxels.

Fast and exact paths (``censored_mle(method=...)``, ``SDMPSI(mle_method=...)``). The exact
path searches tau2 by a fixed number of golden-section steps (24 intercept-only, 28 with a
design) and refits every active study of a design in every leave-n-out round. The fast path
(the default) stops at the likelihood's optimum to a stated tolerance instead: tau2 by Brent's
method (golden section with parabolic steps) to 1e-6 relative on tau between the grid
neighbours of the best grid point, or tau2 = 0 itself where every study's term is
non-decreasing in tau2 (no evaluation), or where tau = 0 is the grid's best point and the
objective's derivative in tau2 at 0 is not negative (the optimum at the boundary, which Brent's
search only approaches, at about 30 evaluations: 84 % of the He et al. voxels; the MLE there
4.5 s -> 2.5 s, tau2 moved by <= 1.4e-12, on SDM-PSI's Enge et al. bound maps by <= 5.3e-9,
beta unchanged); the leave-n-out candidates of a design ranked by their
one-step estimates of ``|C' beta|``, the 8 most promising refitted, then the others only while
a lower bound (the estimate less twice the largest one-step error seen, scaled by the squared
length of the one-step move) can still beat the best refit; the intercept-only kernel keeps
its ranking on both paths (at least three refits: with one, the He et al. data discarded
another study at 6 of 192,712 distinct bound patterns and max |dz| reached 0.23). Measured on SDM-PSI's own bound maps of Enge
et al. (2021) (50 studies, 3 rounds; SDM's 7 reported peaks with their 26 neighbours and 6,000
random voxels, 50 imputations, seed 1) against the exact path: the mean (``mod1``) r(z)
1 - 5e-13, max |dz| 2.1e-5, r(z) against SDM-PSI's ``mod1`` 0.95977 on both paths; the design
``[1, age, age^2, task type, presentation modality]`` r(z) 1 - 1e-14, max |dz| 1.9e-6, MLE 4.4
times faster. Cheaper rankings failed the accepted bound (max |dz| <= 0.05): with a fixed
margin (twice the largest one-step error seen) after at least 3 or 8 refits another study was
discarded at a few voxels (near-ties of consecutive greedy rounds), max |dz| 0.24 and 0.19;
with the scaled bound after 3 refits (8.5 times faster) another study was still discarded at
3 of 3,000 random voxels. On both kernels the fast path also ends a round's search once a
refit brings ``|C' beta|`` within ``MU_ZTOL`` (1e-3) of its standard errors of 0: where many
removals do that equally well (large peak-only meta-analyses, whose bounds mostly straddle 0)
the exact search refits nearly every study in every round. Synthetic 200-study project (10
random peaks a study, 13 rounds, 4,000 random voxels): 15 ms a voxel -> 2.3 ms, coefficients
equal to 4e-12; SDM-PSI's bound maps of Enge et al. (2021), whole mask: coefficients equal to
8e-12 (another study at exact ties only, 1,273 voxels), tau2 to 3e-18.

Modules
-------
:mod:`~analysis.sdm.statistics.metansue.settings`
    The model's constants (known-effect tolerance, the tau2 range) and the conservative
    leave-n-out count.
:mod:`~analysis.sdm.statistics.metansue.mle`
    :func:`~analysis.sdm.statistics.metansue.mle.censored_mle` and its NumPy path (the
    reference of the compiled kernels).
:mod:`~analysis.sdm.statistics.metansue.compiled`
    The compiled (numba) per-voxel MLE kernels, intercept-only and with a design.
:mod:`~analysis.sdm.statistics.metansue.imputation`
    Spatially correlated noise fields and the imputation of study images
    (:func:`~analysis.sdm.statistics.metansue.imputation.impute`).
"""
