"""Pipeline stage "robustness": permutation FWE, jackknife, meta-regression, heterogeneity, subgroups.

He et al. (2024) complemented the SDM-PSI mean analysis (stage ``meta``) with a leave-one-study-
out jackknife, meta-regressions on mean age, percentage of women and treatment (no significant
effects), heterogeneity (I^2) at the peaks and family-wise-error-corrected inference by
permutation of subject images (PSI; Albajes-Eizagirre et al. 2019). This stage re-creates the
main fit exactly from the meta stage's bound maps and seed (``intermediate/meta_fit.npz``: no
pre-processing is repeated; the agreement with ``results/maps/z.nii.gz`` is reported) and runs
the engine's public API on it, ``SDMPSI.fit_preprocessed`` -> ``PSICorrector`` -> ``Jackknife``
(leave one study out, then one ``sdm.robustness.jackknife_group`` out), with the meta-regressions
as ``SDMPSI(covariates=[...], hypothesis=[0, 1], missing="drop")`` fits (a study without the
covariate is left out of that regression and counted) permuted by the same ``PSICorrector``
(Freedman-Lane), then writes

- ``maps/corrp_voxel.nii.gz``, ``maps/corrp_voxel_neg.nii.gz``, ``maps/corrp_tfce.nii.gz``,
  ``maps/corrp_tfce_neg.nii.gz`` (``1 - p_FWE``; each direction corrected separately);
- ``tables/permutation_maxima.tsv`` (max z+, max z-, max TFCE+, max TFCE- per permutation;
  row 1 = the unpermuted data) and ``tables/fwe_peaks.tsv`` (FWE p at every Table 3 peak);
- ``tables/jackknife.tsv`` (every leave-one-study-out and leave-one-disorder-out analysis x
  every cluster) and ``tables/jackknife_summary.tsv``;
- ``tables/metaregression.tsv`` (slope, SE, z, two-tailed p per covariate and peak, and the
  Freedman-Lane FWE p of the slope with ``sdm.robustness.metaregression_permutations``
  permutations of studies);
- ``tables/heterogeneity.tsv`` (tau^2, I^2, H^2, Q and its z at every peak);
- ``tables/subgroups.tsv`` (paradigm subgroups with enough studies: does each cluster survive).

Where inputs are simulated stand-ins (``data/peaks.tsv`` provenance) the returned values say so.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pandas as pd

from analysis.sdm.inference.clusters import direction_labels, threshold_clusters
from analysis.sdm.inputs.io import save_nifti, write_tsv
from analysis.stages import params

LGR = logging.getLogger(__name__)

HETEROGENEITY_COLUMNS = ["cluster", "direction", "x", "y", "z", "tau2", "i2_percent", "h2", "q",
                         "q_z", "df"]
FWE_COLUMNS = ["cluster", "direction", "x", "y", "z", "sdm_z", "sdm_z_psi", "p_fwe_voxel",
               "p_fwe_tfce", "tfce", "survives_fwe_voxel", "survives_fwe_tfce"]


def fwe_at_peaks(perm, peaks: pd.DataFrame, z_meta: np.ndarray, alpha: float) -> pd.DataFrame:
    """FWE-corrected p (voxel and TFCE, direction of the cluster) at every cluster peak."""
    rows = []
    for r in peaks.itertuples(index=False):
        v = int(r.voxel)
        pos = r.sdm_z > 0
        pv = perm.maps["p_voxel" if pos else "p_voxel_neg"][v]
        pt = perm.maps["p_tfce" if pos else "p_tfce_neg"][v]
        rows.append({"cluster": int(r.cluster), "direction": r.direction, "x": r.x, "y": r.y,
                     "z": r.z, "sdm_z": float(z_meta[v]), "sdm_z_psi": float(perm.maps["z"][v]),
                     "p_fwe_voxel": float(pv), "p_fwe_tfce": float(pt),
                     "tfce": float(perm.maps["tfce" if pos else "tfce_neg"][v]),
                     "survives_fwe_voxel": bool(pv < alpha), "survives_fwe_tfce": bool(pt < alpha)})
    return pd.DataFrame(rows, columns=FWE_COLUMNS)


def heterogeneity_at_peaks(maps: dict, peaks: pd.DataFrame, df: int) -> pd.DataFrame:
    """tau^2, I^2 (%), H^2, Q and Q's z at every cluster peak (SDM-PSI's heterogeneity maps)."""
    rows = []
    for r in peaks.itertuples(index=False):
        v = int(r.voxel)
        rows.append({"cluster": int(r.cluster), "direction": r.direction, "x": r.x, "y": r.y,
                     "z": r.z, "tau2": float(maps["tau2"][v]), "i2_percent": float(maps["i2"][v]),
                     "h2": float(maps["h2"][v]), "q": float(maps["q"][v]),
                     "q_z": float(maps["q_z"][v]), "df": int(df)})
    return pd.DataFrame(rows, columns=HETEROGENEITY_COLUMNS)


def produce(ctx) -> dict:
    """Stage ``robustness`` (see the module docstring)."""
    from analysis.sdm.diagnostics import jackknife as jk
    from analysis.sdm.diagnostics import metaregression as mr
    from analysis.sdm.diagnostics.jackknife import Jackknife
    from analysis.sdm.inference.correct import PSICorrector
    from analysis.sdm.maps.space import MaskSpace
    from analysis.stages.meta import FIT_FILE, input_provenance, load_fit

    cfg = ctx.config
    sdm = cfg["sdm"]
    rob = sdm["robustness"]
    n_imp = int(sdm["imputations_quick"] if ctx.quick else sdm["imputations"])
    n_perm = int(sdm["permutations_quick"] if ctx.quick else sdm["permutations"])
    alpha = float(rob["fwe_alpha"])
    thr = params.threshold_params(cfg)

    dataset = params.compendium_dataset(ctx.data_dir, cfg)
    provenance = input_provenance(dataset)
    space = MaskSpace(params.masks(cfg)[0])
    bounds, seed, meta_imp = load_fit(ctx.result(FIT_FILE), space)
    if meta_imp != n_imp:
        raise RuntimeError(f"stage meta fitted {meta_imp} imputations, robustness expects "
                           f"{n_imp}: rerun both stages")
    studies = list(bounds.studies)
    table = dataset.studies.set_index("study").loc[studies].reset_index()

    def estimator(**kw):
        return params.estimator(cfg, n_imp, seed, **kw)

    # ---- main fit (identical to stage "meta") and its clusters; every fit of this stage
    # shares the imputation noise fields of its study positions (drawn once, same values)
    noise = estimator().noise_fields(bounds.space)
    base = estimator(keep_imputations=True).fit_preprocessed(bounds, table, noise=noise)
    z = base.maps["z"]
    meta_z_path = ctx.result("maps/z.nii.gz")
    agreement = None
    if meta_z_path.exists():
        agreement = float(np.nanmax(np.abs(space.from_img(nib.load(meta_z_path)) - z)))
        LGR.info("robustness: re-fit vs stage meta z: max |diff| = %.3g", agreement)
    clusters = threshold_clusters(z, space, local_peaks=False,
                                  directions=direction_labels(bounds.n2), **thr)
    peaks = clusters.peaks()

    # ---- permutation FWE (PSI)
    psi = params.psi_params(cfg)
    result = PSICorrector(n_iters=n_perm, seed=int(ctx.rng("psi").integers(2**31 - 1)), **psi,
                          progress=True).transform(base)
    perm = result.permutation_
    for name in ("corrp_voxel", "corrp_voxel_neg", "corrp_tfce", "corrp_tfce_neg"):
        save_nifti(ctx.out(f"maps/{name}.nii.gz"), perm.get_map(name))
    write_tsv(ctx.out("tables/permutation_maxima.tsv"), perm.maxima, float_format="%.6f")
    base.imputations = result.imputations = None  # not needed any more (m x k x V float32)
    fwe = fwe_at_peaks(perm, peaks, z, alpha)
    write_tsv(ctx.out("tables/fwe_peaks.tsv"), fwe, float_format="%.6g")

    # ---- heterogeneity at the peaks
    het = heterogeneity_at_peaks(result.maps, peaks, result.df)
    write_tsv(ctx.out("tables/heterogeneity.tsv"), het, float_format="%.6g")

    # ---- jackknife: leave one study out, then one group (disorder) out; analyses that need a
    # study column the study table lacks are left out, with the reason
    skipped = {}
    group = rob["jackknife_group"]
    result = Jackknife(**thr, progress=True).transform(result)
    if _missing_column(table, group):
        skipped[f"leave-one-{group}-out"] = _missing_column(table, group)
    else:
        result = Jackknife(groups=group, **thr, progress=True).transform(result)
    jt, summary = result.tables["jackknife"], result.tables["jackknife_summary"]
    write_tsv(ctx.out("tables/jackknife.tsv"), jt, float_format="%.6g")
    write_tsv(ctx.out("tables/jackknife_summary.tsv"), summary)

    # ---- meta-regressions (a study without the covariate is left out of that regression)
    regs = []
    n_mr = int(sdm["permutations_quick"] if ctx.quick else rob["metaregression_permutations"])
    for cov in sdm["covariates"]:
        if _missing_column(table, cov, varying=True):
            skipped[f"metaregression {cov}"] = _missing_column(table, cov, varying=True)
            continue
        res = estimator(covariates=[cov], hypothesis=[0, 1], missing="drop",
                        keep_imputations=n_mr > 1).fit_preprocessed(bounds, table, noise=noise)
        fl = None
        if n_mr > 1:  # Freedman-Lane permutation of studies (Winkler et al. 2014)
            fl = PSICorrector(n_iters=n_mr, seed=int(ctx.rng(f"fl/{cov}").integers(2**31 - 1)),
                              **psi, progress=True).transform(res).permutation_
            res.imputations = None
        regs.append(mr.slope_at_peaks(res, peaks, cov, len(res.dropped_studies), perm=fl,
                                      alpha=alpha, **thr))
    reg = (pd.concat(regs, ignore_index=True) if regs
           else pd.DataFrame(columns=mr.REGRESSION_COLUMNS))
    write_tsv(ctx.out("tables/metaregression.tsv"), reg, float_format="%.6g")

    # ---- subgroups (e.g. paradigm) with enough studies
    col = rob["subgroup_column"]
    sub_rows, sub_fits = [], {}
    if _missing_column(table, col):
        skipped[f"subgroup {col}"] = _missing_column(table, col)
    groups = table[col].astype(str) if col in table.columns else pd.Series([], dtype=str)
    for level in ([] if f"subgroup {col}" in skipped else dict.fromkeys(groups)):
        members = [s for s, g in zip(studies, groups, strict=True) if g == level]
        if len(members) < int(rob["subgroup_min_studies"]):
            LGR.info("subgroup %s=%s: %d studies, below the minimum", col, level, len(members))
            sub_rows.append(pd.DataFrame([{"analysis": f"subgroup {col}", "left_out": level,
                                           "n_studies": len(members)}]))
            continue
        sub_fits[level] = estimator(keep_imputations=False).fit_preprocessed(
            bounds.subset(members), noise=noise)
    if sub_fits:
        sub_rows.insert(0, jk.cluster_survival(
            clusters.labels, peaks, {k: r.maps["z"] for k, r in sub_fits.items()}, space,
            f"subgroup {col}", {k: len(r.n1) for k, r in sub_fits.items()}, **thr))
    subgroups = pd.concat(sub_rows, ignore_index=True) if sub_rows else pd.DataFrame(
        columns=jk.JACKKNIFE_COLUMNS)
    subgroups = subgroups.rename(columns={"left_out": "subgroup"})
    write_tsv(ctx.out("tables/subgroups.tsv"), subgroups, float_format="%.6g")

    # ---- values for the manuscript
    def loo_counts(family):
        s = summary[summary["analysis"] == family]
        return [{"cluster": int(r.cluster), "direction": r.direction, "n_survive": int(r.n_survive),
                 "n_analyses": int(r.n_analyses)} for r in s.itertuples(index=False)]

    sig_reg = reg.dropna(subset=["p_two_tailed"])
    return {
        "inputs_statement": provenance["statement"],
        "imputations": n_imp,
        "permutations": n_perm,
        "permutations_configured": int(sdm["permutations"]),
        "psi_backend": perm.info["backend"],
        "psi_seconds": perm.info["seconds_permutations"],
        "refit_vs_meta_max_abs_z_diff": agreement,
        "psi_identity_vs_meta_max_abs_z_diff": float(np.max(np.abs(perm.maps["z"] - z))),
        "n_clusters": int(len(peaks)),
        "fwe_alpha": alpha,
        "n_clusters_fwe_voxel": int(fwe["survives_fwe_voxel"].sum()),
        "n_clusters_fwe_tfce": int(fwe["survives_fwe_tfce"].sum()),
        "fwe_voxel_count": {"increase": int((perm.maps["p_voxel"] < alpha).sum()),
                            "decrease": int((perm.maps["p_voxel_neg"] < alpha).sum())},
        "max_z_null_median": float(np.median(perm.maxima["max_z"].to_numpy()[1:]))
        if n_perm > 1 else None,
        "jackknife_leave_one_out": loo_counts("leave-one-out"),
        "jackknife_leave_one_group_out": loo_counts(f"leave-one-{group}-out"),
        "metaregression_min_p": float(sig_reg["p_two_tailed"].min()) if len(sig_reg) else None,
        "metaregression_any_p_below_0_05": bool((sig_reg["p_two_tailed"] < 0.05).any()),
        "metaregression_covariates": list(dict.fromkeys(reg["covariate"])),
        "metaregression_slope_clusters": {c: int(n) for c, n in
                                          reg.groupby("covariate")["n_slope_clusters"].first()
                                          .items()},
        "metaregression_permutations": n_mr,
        "metaregression_any_fwe_voxels": bool((reg["n_fwe_voxels"].fillna(0) > 0).any()),
        "metaregression_n_missing": {c: int(n) for c, n in
                                     reg.groupby("covariate")["n_missing"].first().items()},
        "i2_percent_at_peaks": [round(float(x), 3) for x in het["i2_percent"]],
        "subgroups_fitted": sorted(sub_fits),
        # analyses left out for these data, each with the reason (analysis -> reason)
        "skipped": skipped,
    }


def _missing_column(table: pd.DataFrame, column: str, varying: bool = False) -> str | None:
    """Why the study table cannot serve an analysis by ``column``, or None when it can.

    ``varying``: the column must also hold at least two distinct values (a covariate).
    """
    if column not in table.columns:
        return f"the study table has no {column!r} column"
    values = table[column]
    text = values.astype(str).str.strip()
    given = values.notna() & ~text.isin(["", "nan", "NA"])
    if not given.any():
        return f"no study of the study table gives a value of {column!r}"
    if varying and values[given].nunique() < 2:
        return f"every study of the study table has the same value of {column!r}"
    return None
