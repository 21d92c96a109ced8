"""The one translation of the compendium's configuration into engine arguments.

The engine (:mod:`analysis.sdm`) has SDM-PSI's defaults in its signatures and never reads
``config.yaml``; the stages, the commands and the benchmarks call these functions with the
validated configuration (:func:`analysis.config.load_config`) instead of repeating its keys.
"""

from __future__ import annotations

from pathlib import Path


def data_checks(config: dict) -> dict:
    """Check parameters of the study and peak tables (configuration ``data``)."""
    d = config["data"]
    return {"corrected_voxel_p": float(d["corrected_voxel_p"]),
            "mask_tolerance_mm": float(d["mask_tolerance_mm"]),
            "t_tolerance": float(d["t_below_threshold_tolerance"])}


def study_checks(config: dict) -> dict:
    """Check parameters of the study table alone."""
    return {"corrected_voxel_p": float(config["data"]["corrected_voxel_p"])}


def peak_checks(config: dict) -> dict:
    """Check parameters of the peak table alone."""
    c = data_checks(config)
    return {"mask_tolerance_mm": c["mask_tolerance_mm"], "t_tolerance": c["t_tolerance"]}


def compendium_dataset(data_dir: str | Path, config: dict):
    """The compendium's ``studies.tsv`` + ``peaks.tsv`` as an :class:`~analysis.sdm.SDMDataset`."""
    from analysis.data_tables import load_dataset

    return load_dataset(data_dir, **data_checks(config))


def kernel_template(config: dict):
    """The anisotropic kernel's stretch template named by ``sdm.kernel_template``."""
    from analysis.resources import stretch_template

    sdm = config["sdm"]
    return stretch_template(sdm["kernel_template"], dict(sdm.get("template", {})))


def estimator_params(config: dict) -> dict:
    """Arguments of :class:`analysis.sdm.SDMPSI` from ``sdm`` (all but imputations and seed)."""
    sdm = config["sdm"]
    return {"fwhm": float(sdm["fwhm_mm"]), "anisotropy": float(sdm["anisotropy"]),
            "unknown_peak_mode": sdm["unknown_peak_mode"], "kernel_template":
            kernel_template(config), "path_model": sdm["path_model"], "combine": sdm["combine"],
            "outside_stretch": float(sdm["outside_stretch"]),
            "outside_radius": float(sdm["outside_radius_mm"]),
            "leave_n_out": sdm["leave_n_out"], "heterogeneity": sdm["heterogeneity"]}


def estimator(config: dict, imputations: int, seed: int, **kw):
    """The configured :class:`analysis.sdm.SDMPSI` (``kw`` overrides, e.g. covariates)."""
    from analysis.sdm.estimator import SDMPSI

    return SDMPSI(**{**estimator_params(config), "imputations": int(imputations),
                     "seed": int(seed), **kw})


def masks(config: dict) -> tuple:
    """``(mask_img, recreation_mask)`` of :meth:`analysis.sdm.SDMPSI.fit`: the analysis mask
    (:func:`analysis.grid.analysis_mask`) and, when it is a region of interest, the whole mask
    the maps are recreated on.
    """
    from analysis.grid import analysis_mask, gm_mask

    radius = config["sdm"].get("analysis_roi_radius_mm")
    mask = analysis_mask(config["sdm"]["mask"], radius,
                         config["characterisation"]["seeds_published"])
    whole = gm_mask(config["sdm"]["mask"]) if radius else None
    return mask, whole


def kernel(config: dict, space, recreation_mask=None):
    """The configured kernel, prepared once on the space where maps are recreated.

    For an analysis on ``space`` the maps are recreated on the configured whole mask when
    ``space`` is a region of it (:func:`analysis.sdm.maps.preprocess.recreation_space`; the whole
    mask of :func:`masks` unless ``recreation_mask`` is given). Passed to
    :func:`analysis.sdm.maps.preprocess.preprocess` (``kernel=``), one kernel and its peak cache serve
    every simulated meta-analysis on ``space`` or on any region of the recreation space.
    """
    from analysis.sdm.maps.kernel import make_kernel
    from analysis.sdm.maps.preprocess import recreation_space

    ep = estimator_params(config)
    whole = masks(config)[1] if recreation_mask is None else recreation_mask
    return make_kernel(recreation_space(space, whole)[0], fwhm=ep["fwhm"],
                       anisotropy=ep["anisotropy"], template=ep["kernel_template"],
                       path_model=ep["path_model"], outside_stretch=ep["outside_stretch"],
                       outside_radius=ep["outside_radius"])


def threshold_params(config: dict) -> dict:
    """Arguments of :func:`analysis.sdm.inference.clusters.threshold_clusters` (``sdm.threshold``)."""
    sdm = config["sdm"]
    thr = sdm["threshold"]
    return {"p_threshold": float(thr["p_uncorrected"]), "peak_z": float(thr["peak_z"]),
            "min_voxels": int(thr["min_cluster_voxels"]),
            "local_peak_distance_mm": float(sdm["local_peak_min_distance_mm"]),
            "connectivity": int(thr["connectivity"])}


def table3_check_params(config: dict) -> dict:
    """Arguments of :func:`analysis.checks.table3.table3_consistency` (``sdm.threshold``,
    ``sdm.fwhm_mm``).
    """
    thr = config["sdm"]["threshold"]
    return {"p_uncorrected": float(thr["p_uncorrected"]),
            "min_cluster_voxels": int(thr["min_cluster_voxels"]),
            "fwhm_mm": float(config["sdm"]["fwhm_mm"])}


def psi_params(config: dict) -> dict:
    """Arguments of :func:`analysis.sdm.inference.permutation.psi_permutation_test` (``sdm.psi``,
    ``sdm.tfce``), without the number of permutations and the seed.
    """
    psi = config["sdm"]["psi"]
    t = config["sdm"]["tfce"]
    return {"chunk_size": int(psi["chunk_size"]), "reml_iterations": int(psi["reml_iterations"]),
            "reml_tol": float(psi["reml_tol"]), "voxel_block": int(psi["voxel_block"]),
            "subject_fwhm_mm": float(psi["subject_fwhm_mm"]),
            "tfce_subject_fwhm_mm": (None if psi["tfce_subject_fwhm_mm"] is None
                                     else float(psi["tfce_subject_fwhm_mm"])),
            "backend": psi["backend"], "precision": psi["precision"],
            "n_jobs": int(psi["n_jobs"]),
            "tfce_params": {"E": float(t["E"]), "H": float(t["H"]),
                            "n_steps": int(t["n_steps"]),
                            "connectivity": int(t["connectivity"])}}
