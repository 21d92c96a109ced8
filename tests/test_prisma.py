"""Figure 1 (PRISMA 2020 flow diagram) from data/prisma.yaml."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from analysis.figures import prisma
from analysis.sdm.errors import DataError

REPO_PRISMA = prisma.paths.REPO_ROOT / "data" / "prisma.yaml"


def _write(tmp_path, record):
    path = tmp_path / "prisma.yaml"
    path.write_text(yaml.safe_dump(record), encoding="utf-8")
    return path


@pytest.fixture
def record():
    return yaml.safe_load(REPO_PRISMA.read_text(encoding="utf-8"))


def test_record_holds_only_what_the_paper_states():
    rec = prisma.load_prisma(REPO_PRISMA)
    assert rec["search"]["databases"] == ["PubMed", "Web of Science", "Scopus"]
    assert rec["search"]["end"] == "May 2024"
    reported = {k: v for k, v in rec["counts"].items() if v is not None}
    # the text states only the number of included studies; no stage count is guessed
    assert reported == {"included_studies": 11}


def test_included_studies_match_the_study_table():
    rec = prisma.load_prisma(REPO_PRISMA)
    studies = pd.read_csv(prisma.paths.REPO_ROOT / "data" / "studies.tsv", sep="\t")
    assert rec["counts"]["included_studies"] == len(studies)


def test_unknown_counts_are_drawn_as_not_reported():
    rec = prisma.load_prisma(REPO_PRISMA)
    texts = prisma.box_texts(rec)
    assert "n = 11" in texts["included"]
    for box in ("identified", "screened", "sought", "assessed", "excluded_full_text", "other"):
        assert "n = not reported" in texts[box], box
    assert "PubMed, Web of Science, Scopus" in texts["identified"]
    assert "May 2024" in texts["identified"]


def test_filled_counts_are_drawn_and_checked(tmp_path, record):
    record["counts"].update(identified_databases=100, removed_duplicates=20, removed_other=5,
                            screened=75, excluded_screening=50, sought=25, not_retrieved=2,
                            identified_other=3, assessed=26, excluded_full_text=15)
    rec = prisma.load_prisma(_write(tmp_path, record))
    texts = prisma.box_texts(rec)
    assert "n = 75" in texts["screened"] and "not reported" not in texts["screened"]
    record["counts"]["screened"] = 74
    with pytest.raises(DataError) as err:
        prisma.load_prisma(_write(tmp_path, record))
    assert "counts.screened" in str(err.value) and "prisma.yaml" in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r["counts"].update(screened=-3), "counts.screened"),
        (lambda r: r["counts"].update(screened=2.5), "counts.screened"),
        (lambda r: r["counts"].update(screened="many"), "counts.screened"),
        (lambda r: r["counts"].pop("assessed"), "counts.assessed"),
        (lambda r: r["counts"].update(included_studies=None), "counts.included_studies"),
        (lambda r: r["counts"].update(typo=3), "counts"),
        (lambda r: r["search"].update(databases=[]), "search.databases"),
        (lambda r: r["search"].pop("end"), "search.end"),
        (lambda r: r.pop("exclusion_reasons"), "exclusion_reasons"),
    ],
    ids=["negative", "float", "text", "missing", "no-included", "unknown", "no-db", "no-end",
         "no-reasons"],
)
def test_bad_record_names_file_and_field(tmp_path, record, mutate, field):
    mutate(record)
    with pytest.raises(DataError) as err:
        prisma.load_prisma(_write(tmp_path, record))
    assert err.value.field == field
    assert err.value.file.endswith("prisma.yaml")


def test_malformed_yaml(tmp_path):
    path = tmp_path / "prisma.yaml"
    path.write_text("counts: [unclosed\n", encoding="utf-8")
    with pytest.raises(DataError, match="prisma.yaml"):
        prisma.load_prisma(path)


def test_stage_writes_png_and_svg_and_values(tmp_path, data_copy):
    from analysis.pipeline import run_stages

    results = tmp_path / "res"
    status = run_stages(["figure1"], data_dir=data_copy, results_dir=results)
    assert status == {"figure1": "ran"}
    png, svg = results / "figures/figure1.png", results / "figures/figure1.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not reported" in svg.read_text()
    values = pd.read_json(results / "values.json", typ="series")["figure1"]
    assert values["n_included"] == 11
    assert values["n_databases"] == 3
    assert values["search_end"] == "May 2024"
    assert values["n_counts_not_reported"] == len(prisma.COUNT_FIELDS) - 1
    # deterministic bytes: a forced rerun gives identical files
    before = png.read_bytes(), svg.read_bytes()
    run_stages(["figure1"], data_dir=data_copy, results_dir=results, force=True)
    assert (png.read_bytes(), svg.read_bytes()) == before


def test_bad_record_writes_nothing(tmp_path, data_copy):
    from analysis.pipeline import run_stages

    (data_copy / "prisma.yaml").write_text("counts: {included_studies: -1}\n")
    results = tmp_path / "res"
    with pytest.raises(DataError):
        run_stages(["figure1"], data_dir=data_copy, results_dir=results)
    assert not (results / "figures").exists()
