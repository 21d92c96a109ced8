"""Pipeline stage ``characterisation``: Figures 3-4 for the published and the reproduced peaks.

Two seed sets:

* ``published``: the paper's four peaks (config ``characterisation.seeds_published``) - real
  inputs, a genuine reproduction of the characterisation step;
* ``meta``: the peaks of this compendium's meta-analysis (``results/tables/table3.tsv`` of stage
  ``meta``); skipped, and said so in the values, when the table is absent or empty.

Outputs: ``maps/{macm,rsfc,conjunction}_<set>_<seed>.nii.gz``,
``maps/conjunction_<set>_{increase,decrease}.nii.gz``, ``tables/characterisation_seeds.tsv``,
``tables/characterisation_labels.tsv``, ``tables/network_overlap.tsv``, ``tables/top_terms.tsv``,
``figures/figure3.{png,svg}``, ``figures/figure4.{png,svg}`` (published set) and
``figures/figure{3,4}_meta.{png,svg}`` (meta set).
"""

from __future__ import annotations

import logging

from analysis.characterisation.core import (
    characterise,
    published_seeds,
    seeds_from_table3,
    write_tables,
)

LGR = logging.getLogger(__name__)


def produce(ctx) -> dict:
    """Run the characterisation for both seed sets; return the values for ``values.json``."""
    from analysis.figures import figure3, figure4

    cfg = ctx.config["characterisation"]
    sets = [("published", published_seeds(cfg), "published peaks of He et al. 2024")]
    table3 = ctx.result("tables/table3.tsv")
    meta_seeds = seeds_from_table3(table3)
    values: dict = {}
    if meta_seeds:
        sets.append(("meta", meta_seeds, "peaks of this compendium's meta-analysis"))
    else:
        values["meta"] = {"skipped": f"{table3.name} of stage 'meta' is absent or empty"}
        LGR.warning("characterisation: no reproduced peaks (%s absent or empty)", table3)
    results = []
    for name, seeds, label in sets:
        res = characterise(seeds, cfg, ctx.out, name)
        suffix = "" if name == "published" else f"_{name}"
        cap3 = figure3.draw(res["panels"], ctx.out(f"figures/figure3{suffix}.png"),
                            ctx.out(f"figures/figure3{suffix}.svg"), label,
                            substitute=any(p["kind"] != "macm_only" for p in res["panels"]))
        cap4 = figure4.draw(res["terms"], seeds, ctx.out(f"figures/figure4{suffix}.png"),
                            ctx.out(f"figures/figure4{suffix}.svg"), label)
        res["values"]["caption_figure3"] = cap3
        res["values"]["caption_figure4"] = cap4
        res["values"]["rsfc"] = "substitute: HCP group parcel FC (brainspace Schaefer-400)"
        values[name] = res["values"]
        results.append(res)
    write_tables(results, ctx.out)
    values["parameters"] = {k: cfg[k] for k in ("top_terms", "rsfc_r_threshold",
                                                 "macm_radius_mm")}
    return values
