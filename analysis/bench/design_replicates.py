"""The design checks of stage ``design`` with more replicates than ``make paper`` affords.

Registered in ``python -m analysis bench`` as ``design``. Runs
:func:`analysis.stages.design.compute` — the stage's own code, on the configured whole
grey-matter mask — with ``--design-null-replicates`` null meta-analyses and
``--design-sensitivity-replicates`` replicates per true effect size, and reports the design's
voxel-wise FWE threshold of each direction with its intervals, the Monte-Carlo FWE p of each
published peak, the family-wise false-positive rate of the paper's thresholds, and the detection
rates at the published locations. With at least 19 null replicates a published peak that no
null maximum reaches passes the exact Monte-Carlo test at 5 % (Barnard, 1963). Random streams
are the stage's (``derive_rng(seed, "design/<name>")``), so the first replicates are those of
the stage and more replicates only add to them. The PSI threshold of the stand-in data is taken
from ``results/tables/permutation_maxima.tsv`` when stage ``robustness`` has written it.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import numpy as np

from analysis.bench import peak_rss_gb, register

LGR = logging.getLogger(__name__)

#: defaults of the bench options (about 35 CPU-seconds per whole-brain null meta-analysis and
#: 40 per sensitivity replicate of six effect sizes, measured on a shared 2-core machine)
DEFAULTS = {"null_replicates": 20, "sensitivity_replicates": 5}


def run_design(null_replicates: int = DEFAULTS["null_replicates"],
               sensitivity_replicates: int = DEFAULTS["sensitivity_replicates"],
               imputations: int | None = None, overrides: dict | None = None,
               psi_path=None) -> dict:
    """:func:`analysis.stages.design.compute` with the given replicate counts.

    Parameters
    ----------
    null_replicates, sensitivity_replicates : int
        Replicate counts (``design.null_replicates``, ``design.sensitivity_replicates``).
    imputations : int, optional
        Imputations per simulated meta-analysis (default ``design.imputations``).
    overrides : dict, optional
        Further configuration overrides (validated by :func:`analysis.config.load_config`).
    psi_path : path-like, optional
        PSI permutation maxima to compare with (default ``results/tables/permutation_maxima.tsv``
        when it exists).

    Returns
    -------
    dict
        The output of :func:`analysis.stages.design.compute` plus ``seconds``.
    """
    from pathlib import Path

    from analysis import paths
    from analysis.checks.design_simulation import read_permutation_maxima
    from analysis.config import load_config
    from analysis.sdm.rng import derive_rng
    from analysis.stages.design import compute, design_params

    design = {"null_replicates": int(null_replicates),
              "sensitivity_replicates": int(sensitivity_replicates)}
    if imputations is not None:
        design["imputations"] = int(imputations)
    ov = copy.deepcopy(overrides or {})
    ov.setdefault("design", {}).update(design)
    cfg = load_config(ov)
    p = design_params(cfg, quick=False)
    path = Path(psi_path) if psi_path else paths.results_dir() / "tables/permutation_maxima.tsv"
    psi = read_permutation_maxima(path) if path.exists() else None
    t0 = time.perf_counter()
    out = compute(cfg, paths.data_dir(), p, lambda name: derive_rng(cfg["seed"],
                                                                      f"design/{name}"), psi)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


@register("design", "design of the paper: whole-brain null maximum of SDM-Z (FWE threshold, "
                    "Monte-Carlo p of the published peaks) and sensitivity at the published "
                    "locations, with more replicates than the pipeline stage")
def bench_design(args: argparse.Namespace) -> dict:
    """Benchmark entry: :func:`run_design` with the ``--design-*`` options of the command."""
    def opt(name):
        value = getattr(args, f"design_{name}", None)
        return DEFAULTS.get(name) if value is None else value

    out = run_design(null_replicates=int(opt("null_replicates")),
                     sensitivity_replicates=int(opt("sensitivity_replicates")),
                     imputations=opt("imputations"))
    v = out["values"]
    m = {"null_replicates": v["null"]["replicates"], "imputations": v["null"]["imputations"],
         "voxels": v["null"]["n_voxels"], "whole_mask": v["null"]["whole_mask"]}
    for key in ("increase", "decrease", "tfce_increase", "tfce_decrease"):
        t = v["null"][key] or {}
        for k in ("estimate", "lower", "upper", "gumbel", "gumbel_lower", "gumbel_upper",
                  "null_median", "null_max", "psi_standin"):
            m[f"fwe_{key}_{k}"] = t.get(k)
    for pk in v["published"]:
        c = pk["cluster"]
        m.update({f"peak{c}_sdm_z": pk["sdm_z"], f"peak{c}_p_fwe": pk["p_fwe"],
                  f"peak{c}_p_fwe_ci": [pk["p_fwe_lower"], pk["p_fwe_upper"]],
                  f"peak{c}_p_fwe_gumbel": pk["p_fwe_gumbel"], f"peak{c}_verdict": pk["verdict"],
                  f"peak{c}_verdict_gumbel": pk["verdict_gumbel"]})
    for key, r in v["paper_threshold_fwer"].items():
        if isinstance(r, dict):
            m[f"paper_threshold_fwer_{key}"] = [r["rate"], r["lower"], r["upper"]]
    m["sensitivity_replicates"] = v["sensitivity"]["replicates"]
    for loc in v["sensitivity"]["locations"]:
        i = loc["location"]
        m[f"location{i}_p_detect"] = dict(zip(loc["effect_sizes"], loc["p_detect"]))
        m[f"location{i}_p_detect_fwe"] = dict(zip(loc["effect_sizes"], loc["p_detect_fwe"]))
        m[f"location{i}_p_covered"] = dict(zip(loc["effect_sizes"], loc["p_covered"]))
        m[f"location{i}_compatible"] = loc["compatible_effect_sizes"]
    null = out["tables"]["design_null_maxima"]
    m["seconds_per_null_replicate"] = round(float(np.mean(null["seconds"])), 1)
    m["seconds"] = out["seconds"]
    m["peak_rss_gb"] = round(peak_rss_gb(), 2)
    notes = [
        "null: simulated meta-analyses matched to the design (real n1/n2, thresholds, reported "
        "directions, peak counts of data/peaks.tsv) through the whole pipeline on the whole "
        "grey-matter mask; FWE threshold = 95th percentile of the per-direction maximum SDM-Z",
        "intervals: order-statistic (distribution-free; unbounded above with fewer than 72 "
        "replicates) and Gumbel maximum likelihood with a parametric bootstrap",
        "verdict: Monte-Carlo test, passes when (r + 1) / (n + 1) <= 0.05 (needs >= 19 "
        "replicates); verdict_gumbel: |z| beyond the Gumbel interval of the threshold",
        "sensitivity: grey matter within design.sensitivity_roi_radius_mm of the published "
        "peaks; detection = same-sign cluster peak within design.match_distance_mm",
    ]
    return {"metrics": m, "ratios": {}, "notes": notes}
