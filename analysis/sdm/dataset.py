"""The input of the engine: a study table and a peak table in MNI space (and, optionally, a mask).

``SDMDataset`` is deliberately small (two DataFrames), in the spirit of NiMARE's Dataset:

- ``studies``: one row per study with ``study, n1, n2, t_thr`` (``n2`` NaN for one-sample
  studies) and any covariate columns;
- ``peaks``: one row per peak with ``study, x, y, z`` (MNI mm) and signed ``t`` (NaN when the
  statistic is unknown; then ``sign`` gives the direction);
- ``mask``: the analysis mask of the project (SDM-PSI writes ``sdm_mask.nii.gz`` into a project
  folder), or None.

Readers: :meth:`SDMDataset.from_sdm_project` (an SDM-PSI project folder),
:meth:`SDMDataset.from_tables` (validated ``studies.tsv`` / ``peaks.tsv`` of
:mod:`analysis.sdm.studies` and :mod:`analysis.sdm.peaks`), :meth:`SDMDataset.from_nimare`
(a NiMARE Dataset with t values); :meth:`SDMDataset.to_nimare` goes the other way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: the mask SDM-PSI writes into a project folder
SDM_MASK_FILE = "sdm_mask.nii.gz"


@dataclass
class SDMDataset:
    """Studies and MNI peaks for the SDM engine.

    Parameters
    ----------
    studies : pandas.DataFrame
        ``study, n1, n2, t_thr`` and covariates.
    peaks : pandas.DataFrame
        ``study, x, y, z, t, sign`` (MNI mm; ``t`` NaN when unknown).
    mask : nibabel image, optional
        The project's analysis mask on SDM-PSI's 2 mm grid.
    """

    studies: pd.DataFrame
    peaks: pd.DataFrame
    mask: object = None

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

    def __repr__(self) -> str:
        return (f"SDMDataset({len(self.studies)} studies, {len(self.peaks)} peaks"
                f"{', with mask' if self.mask is not None else ''})")

    @property
    def ids(self) -> list[str]:
        """Study identifiers in table order."""
        return list(self.studies["study"])

    def study_peaks(self, study: str) -> pd.DataFrame:
        """The peaks of one study."""
        return self.peaks[self.peaks["study"] == study]

    def subset(self, keep) -> SDMDataset:
        """Dataset restricted to the given study ids (order of the study table kept)."""
        keep = set(keep)
        s = self.studies[self.studies["study"].isin(keep)].reset_index(drop=True)
        p = self.peaks[self.peaks["study"].isin(keep)].reset_index(drop=True)
        return SDMDataset(s, p, self.mask)

    # ------------------------------------------------------------------------------------
    # readers
    @classmethod
    def from_tables(cls, studies: pd.DataFrame, peaks: pd.DataFrame, mask=None) -> SDMDataset:
        """From a validated study table and peak table (:func:`analysis.sdm.studies.load_studies`,
        :func:`analysis.sdm.peaks.load_peaks`): peaks in MNI (``x_mni, y_mni, z_mni``).
        """
        p = peaks.drop(columns=["x", "y", "z"]).rename(
            columns={"x_mni": "x", "y_mni": "y", "z_mni": "z"})
        s = studies if "n2" in studies.columns else studies.assign(n2=np.nan)
        return cls(s.reset_index(drop=True), p.reset_index(drop=True), mask)

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, **checks) -> SDMDataset:
        """``studies.tsv`` and ``peaks.tsv`` of a folder, validated
        (:func:`analysis.sdm.peaks.load_peaks`; ``checks`` are its check parameters).
        """
        from analysis.sdm.peaks import _split_checks, load_peaks
        from analysis.sdm.studies import load_studies

        study_kw, _ = _split_checks(checks)
        studies = load_studies(data_dir, **study_kw)
        return cls.from_tables(studies, load_peaks(data_dir, studies=studies, **checks))

    @classmethod
    def from_sdm_project(cls, folder: str | Path, corrected_voxel_p: float = 0.05,
                         read_mask: bool = True) -> SDMDataset:
        """Any SDM-PSI project folder (``sdm_table.txt`` + peak files), one- or two-sample.

        The text tables of :func:`analysis.sdm.project.read_sdm_project` are typed and converted
        (Talairach to MNI, signed t) by the same checks as the compendium's own data, except the
        brain-mask, duplicate and below-threshold checks, which published SDM projects fail.
        The folder's ``sdm_mask.nii.gz`` (written by SDM-PSI) becomes the dataset's mask when
        present and ``read_mask``. SDM-PSI's pre-processed maps (``pp/``) are never read here.
        """
        import nibabel as nib

        from analysis.sdm.errors import DataErrors
        from analysis.sdm.peaks import check_peaks
        from analysis.sdm.project import _typed_studies, read_sdm_project

        folder = Path(folder)
        raw_s, raw_p = read_sdm_project(folder)
        studies = _typed_studies(raw_s, corrected_voxel_p)
        raw_p = raw_p.copy()
        raw_p.index = pd.RangeIndex(1, len(raw_p) + 1)
        peaks, errors = check_peaks(raw_p, studies, f"{folder.name}/peaks", check_mask=False,
                                    check_duplicates=False)
        if errors:
            raise DataErrors(errors)
        mask_path = folder / SDM_MASK_FILE
        mask = nib.load(str(mask_path)) if read_mask and mask_path.is_file() else None
        return cls.from_tables(studies, peaks, mask)

    # ------------------------------------------------------------------------------------
    # NiMARE
    @classmethod
    def from_nimare(cls, dset, t_thr=None, t_column: str = "t") -> SDMDataset:
        """From a :class:`nimare.dataset.Dataset` whose coordinates carry signed t values.

        Parameters
        ----------
        dset : nimare.dataset.Dataset
            Coordinates with a ``t`` column (signed; NaN for an unknown statistic, then a
            ``sign`` column is required), metadata ``sample_sizes`` (``[n]`` one-sample,
            ``[n1, n2]`` two-sample) and, unless ``t_thr`` is given, ``t_thr``.
        t_thr : float, optional
            Voxel t threshold of every study (when the metadata have none).
        t_column : str
            Coordinate column holding the t values.

        Returns
        -------
        SDMDataset
            One study per NiMARE experiment, named by its ``study_id`` when every study has one
            experiment, else by its ``id`` (``<study>-<contrast>``); coordinates in MNI.
        """
        coords = dset.coordinates
        meta = dset.metadata.set_index("id")
        names = dict(zip(dset.metadata["id"], dset.metadata["id"], strict=True))
        if "study_id" in dset.metadata.columns and dset.metadata["study_id"].is_unique:
            names = dict(zip(dset.metadata["id"], dset.metadata["study_id"], strict=True))
        if t_column not in coords.columns:
            raise ValueError(f"the NiMARE coordinates have no {t_column!r} column (signed t "
                             "values are needed for SDM)")
        rows = []
        for sid in meta.index:
            sizes = meta.at[sid, "sample_sizes"] if "sample_sizes" in meta.columns else None
            if sizes is None or (np.ndim(sizes) == 0 and not np.isfinite(sizes)):
                raise ValueError(f"experiment {sid!r}: metadata 'sample_sizes' is missing")
            sizes = [float(x) for x in np.atleast_1d(sizes)]
            thr = meta.at[sid, "t_thr"] if "t_thr" in meta.columns else t_thr
            if thr is None or not np.isfinite(float(thr)):
                raise ValueError(f"experiment {sid!r}: no t_thr (metadata or argument)")
            rows.append({"study": names[sid], "n1": sizes[0],
                         "n2": sizes[1] if len(sizes) > 1 else np.nan, "t_thr": float(thr)})
        t = pd.to_numeric(coords[t_column], errors="coerce").to_numpy(float)
        if "sign" in coords.columns:
            sign = pd.to_numeric(coords["sign"], errors="coerce").to_numpy(float)
        else:
            sign = np.sign(t)
        if not np.all(np.isin(sign, (1.0, -1.0))):
            raise ValueError("every coordinate needs a non-zero t or a sign of +1/-1")
        peaks = pd.DataFrame({"study": coords["id"].map(names).to_numpy(),
                              "x": coords["x"].to_numpy(float), "y": coords["y"].to_numpy(float),
                              "z": coords["z"].to_numpy(float), "t": t,
                              "sign": sign.astype(np.int64)})
        return cls(pd.DataFrame(rows), peaks)

    def to_nimare(self, target: str = "mni152_2mm"):
        """A :class:`nimare.dataset.Dataset` with the peaks (``t`` and ``sign`` columns), the
        sample sizes (metadata ``sample_sizes``) and thresholds (metadata ``t_thr``).
        """
        from nimare.dataset import Dataset

        data = {}
        for rec in self.studies.to_dict("records"):
            pk = self.study_peaks(rec["study"])
            sizes = [int(rec["n1"])] + ([int(rec["n2"])] if np.isfinite(rec["n2"]) else [])
            contrast = {"metadata": {"sample_sizes": sizes, "t_thr": float(rec["t_thr"])}}
            if len(pk):  # a study without peaks has no coordinates (NiMARE's convention)
                contrast["coords"] = {"space": "MNI", "x": pk["x"].tolist(),
                                      "y": pk["y"].tolist(), "z": pk["z"].tolist(),
                                      "t": pk["t"].tolist(),
                                      "sign": pk["sign"].astype(int).tolist()}
            data[str(rec["study"])] = {"contrasts": {"1": contrast}}
        import warnings

        with warnings.catch_warnings():  # NiMARE 0.22's estimators still take a Dataset
            warnings.filterwarnings("ignore", "nimare.dataset.Dataset is deprecated",
                                    FutureWarning)
            return Dataset(data, target=target)
