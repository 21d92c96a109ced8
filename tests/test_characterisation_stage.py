"""Seed parsing, the characterise command and the pipeline stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.characterisation import core
from analysis.characterisation import databases as dbs
from analysis.config import load_config
from analysis.sdm.errors import DataError

CFG = load_config()["characterisation"]


def test_published_seeds_from_config():
    seeds = core.published_seeds(CFG)
    assert [s.id for s in seeds] == ["P1", "P2", "P3", "P4"]
    assert [s.direction for s in seeds] == ["increase", "increase", "decrease", "decrease"]
    assert seeds[2].xyz == (-22.0, -48.0, -28.0)


def test_parse_seeds():
    seeds = core.parse_seeds("0,48,0; 60, -14, -12")
    assert [s.xyz for s in seeds] == [(0, 48, 0), (60, -14, -12)]
    with pytest.raises(DataError, match="row 2"):
        core.parse_seeds("0,48,0;1,2")
    with pytest.raises(DataError):
        core.parse_seeds(" ; ")


def test_seeds_from_table3(tmp_path):
    assert core.seeds_from_table3(tmp_path / "absent.tsv") == []
    f = tmp_path / "table3.tsv"
    pd.DataFrame(columns=["direction", "x", "y", "z"]).to_csv(f, sep="\t", index=False)
    assert core.seeds_from_table3(f) == []
    pd.DataFrame({"direction": ["Patients>Controls", "decrease", "?"], "x": [0, 1, 2],
                  "y": [48, 2, 3], "z": [0, 3, 4], "sdm_z": [3.5, -2.0, -1.5]}).to_csv(
        f, sep="\t", index=False)
    seeds = core.seeds_from_table3(f)
    assert [s.direction for s in seeds] == ["increase", "decrease", "decrease"]
    assert [s.id for s in seeds] == ["M1", "M2", "M3"]
    pd.DataFrame({"direction": ["increase"], "x": ["a"], "y": [1], "z": [2]}).to_csv(
        f, sep="\t", index=False)
    with pytest.raises(DataError, match="row 1, field 'x'"):
        core.seeds_from_table3(f)
    pd.DataFrame({"x": [0], "y": [1], "z": [2]}).to_csv(f, sep="\t", index=False)
    with pytest.raises(DataError, match="direction"):
        core.seeds_from_table3(f)


def test_characterise_command(mirror, tmp_path, capsys):
    from analysis.cli import main

    out = tmp_path / "out"
    rc = main(["characterise", "--seeds", "60,-14,-12;-22,-48,-28", "--out", str(out),
               "--directions", "increase,decrease", "--no-decode"])
    assert rc == 0
    seeds = pd.read_csv(out / "tables" / "characterisation_seeds.tsv", sep="\t")
    assert list(seeds["n_studies_6mm"]) == [229, 130]
    assert list(seeds["rsfc_source"]) == ["hcp_substitute", "none"]
    assert list(seeds["network_map"]) == ["conjunction", "macm_only"]
    assert (out / "maps" / "conjunction_cli_S1.nii.gz").exists()
    assert not (out / "maps" / "conjunction_cli_S2.nii.gz").exists()
    assert (out / "maps" / "macm_cli_S2.nii.gz").exists()
    assert (out / "figures" / "figure3.png").stat().st_size > 10_000
    cap = (out / "figures" / "figure3_caption.txt").read_text()
    assert "SUBSTITUTE" in cap and "MACM only" in cap
    nets = pd.read_csv(out / "tables" / "network_overlap.tsv", sep="\t")
    conj = nets[(nets["map"] == "S1") & (nets["kind"] == "conjunction")]
    assert conj["Default"].item() > 0.5  # MTG conjunction mostly DMN
    assert set(nets.loc[nets["map"] == "S2", "kind"]) == {"macm_only", "macm"}
    shares = nets.loc[:, "outside":"Default"].sum(axis=1)
    assert np.allclose(shares, 1.0, atol=1e-3)
    assert "229 studies" in capsys.readouterr().out
    src = pd.read_csv(out / "tables" / "characterisation_sources.tsv", sep="\t")
    assert src["sha256"].iloc[0] == dbs.registry()[dbs.NS_COORDS]["sha256"]


def test_characterise_command_bad_seeds(capsys):
    from analysis.cli import main

    assert main(["characterise", "--seeds", "1,2", "--out", "/nonexistent"]) == 1
    assert "three numbers" in capsys.readouterr().err


@pytest.mark.slow
def test_stage_end_to_end(mirror, results_tmp, data_copy):
    """The whole stage on the published seeds (meta stage absent -> said so in values)."""
    from analysis.config import load_config as lc
    from analysis.pipeline import STAGES, _run_one

    stage = next(s for s in STAGES if s.name == "characterisation")
    _run_one(stage, "test", lc(), data_copy, results_tmp, False)
    vals = json.loads((results_tmp / "values" / "characterisation.json").read_text())
    assert "skipped" in vals["meta"]
    _check_published(vals, results_tmp)


@pytest.mark.slow
def test_stage_with_meta_peaks(mirror, results_tmp, data_copy):
    """With a table3.tsv from stage 'meta' (here two rows of the published Table 3 standing in
    for it), the 'meta' seed set is characterised too and gets its own figures."""
    from analysis.config import load_config as lc
    from analysis.pipeline import STAGES, _run_one

    pub = pd.read_csv(data_copy / "published_table3.tsv", sep="\t")
    (results_tmp / "tables").mkdir(parents=True)
    pub.iloc[[1, 3]].to_csv(results_tmp / "tables" / "table3.tsv", sep="\t", index=False)
    stage = next(s for s in STAGES if s.name == "characterisation")
    _run_one(stage, "test", lc(), data_copy, results_tmp, False)
    vals = json.loads((results_tmp / "values" / "characterisation.json").read_text())
    meta = vals["meta"]["seeds"]
    assert [meta[k]["direction"] for k in ("M1", "M2")] == ["increase", "decrease"]
    assert meta["M1"]["n_studies_6mm"] == 229 and meta["M2"]["n_studies_6mm"] == 440
    assert (results_tmp / "figures" / "figure3_meta.png").exists()
    assert (results_tmp / "figures" / "figure4_meta.svg").exists()
    seeds = pd.read_csv(results_tmp / "tables" / "characterisation_seeds.tsv", sep="\t")
    assert list(seeds["set"].unique()) == ["published", "meta"]


def _check_published(vals, results_tmp):
    pub = vals["published"]
    assert [pub["seeds"][k]["n_studies_6mm"] for k in ("P1", "P2", "P3", "P4")] == \
        [366, 229, 130, 440]
    assert pub["seeds"]["P1"]["dmn_share"] > 0.8        # paper: ACC couples with the DMN
    assert pub["overlap_increase"]["dmn_share"] > 0.8
    for f in ("figures/figure3.png", "figures/figure3.svg", "figures/figure4.png",
              "figures/figure4.svg", "tables/top_terms.tsv", "tables/network_overlap.tsv",
              "tables/characterisation_labels.tsv", "maps/conjunction_published_increase.nii.gz"):
        assert (results_tmp / f).exists(), f
    labels = pd.read_csv(results_tmp / "tables" / "characterisation_labels.tsv", sep="\t")
    assert {"label_aal", "label_juelich", "aal_breakdown"} <= set(labels.columns)
