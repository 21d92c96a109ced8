"""The input of the engine: a study table and a peak table in MNI space.

``SDMDataset`` is deliberately small (two DataFrames), in the spirit of NiMARE's Dataset:

- ``studies``: one row per study with ``study, n1, n2, t_thr`` (``n2`` NaN for one-sample
  studies) and any covariate columns;
- ``peaks``: one row per peak with ``study, x, y, z`` (MNI mm) and signed ``t`` (NaN when the
  statistic is unknown; then ``sign`` gives the direction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class SDMDataset:
    """Studies and MNI peaks for the SDM engine."""

    studies: pd.DataFrame
    peaks: pd.DataFrame

    def __post_init__(self):
        need_s = {"study", "n1", "n2", "t_thr"}
        need_p = {"study", "x", "y", "z", "t", "sign"}
        if missing := need_s - set(self.studies.columns):
            raise ValueError(f"study table lacks columns {sorted(missing)}")
        if missing := need_p - set(self.peaks.columns):
            raise ValueError(f"peak table lacks columns {sorted(missing)}")
        unknown = set(self.peaks["study"]) - set(self.studies["study"])
        if unknown:
            raise ValueError(f"peaks for unknown studies: {sorted(unknown)}")

    @property
    def ids(self) -> list[str]:
        return list(self.studies["study"])

    def study_peaks(self, study: str) -> pd.DataFrame:
        return self.peaks[self.peaks["study"] == study]

    def subset(self, keep) -> SDMDataset:
        """Dataset restricted to the given study ids (order of the study table kept)."""
        keep = set(keep)
        s = self.studies[self.studies["study"].isin(keep)].reset_index(drop=True)
        p = self.peaks[self.peaks["study"].isin(keep)].reset_index(drop=True)
        return SDMDataset(s, p)

    @classmethod
    def from_data_dir(cls, data_dir: str | Path | None = None) -> SDMDataset:
        """The compendium's own data (``data/studies.tsv`` and ``data/peaks.tsv``)."""
        from analysis.peaks import load_peaks
        from analysis.studies import load_studies

        studies = load_studies(data_dir)
        peaks = load_peaks(data_dir, studies=studies)
        p = peaks.drop(columns=["x", "y", "z"]).rename(
            columns={"x_mni": "x", "y_mni": "y", "z_mni": "z"})
        return cls(studies.reset_index(drop=True), p.reset_index(drop=True))

    @classmethod
    def from_sdm_project(cls, folder: str | Path, config: dict | None = None) -> SDMDataset:
        """Any SDM-PSI project folder (``sdm_table.txt`` + peak files), one- or two-sample.

        The text tables of :func:`analysis.sdm_format.read_sdm_project` are typed and converted
        (Talairach to MNI, signed t) by the same checks as the compendium's own data, except the
        brain-mask, duplicate and below-threshold checks, which published SDM projects fail.
        """
        from analysis.config import load_config
        from analysis.errors import DataErrors
        from analysis.peaks import check_peaks
        from analysis.sdm_format import _typed_studies, read_sdm_project

        cfg = config or load_config()
        raw_s, raw_p = read_sdm_project(folder)
        studies = _typed_studies(raw_s, cfg)
        raw_p = raw_p.copy()
        raw_p.index = pd.RangeIndex(1, len(raw_p) + 1)
        peaks, errors = check_peaks(raw_p, studies, f"{Path(folder).name}/peaks", cfg,
                                    check_mask=False, check_duplicates=False)
        if errors:
            raise DataErrors(errors)
        peaks = peaks.drop(columns=["x", "y", "z"]).rename(
            columns={"x_mni": "x", "y_mni": "y", "z_mni": "z"})
        if "n2" not in studies.columns:
            studies = studies.assign(n2=np.nan)
        return cls(studies.reset_index(drop=True), peaks.reset_index(drop=True))
