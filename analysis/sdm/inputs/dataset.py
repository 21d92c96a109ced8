"""The input of the engine: a study table and a peak table in MNI space (and, optionally, a mask).

``SDMDataset`` is deliberately small (two DataFrames), in the spirit of NiMARE's Dataset:

- ``studies``: one row per study with ``study, n1, n2, t_thr`` (``n2`` NaN for one-sample
  studies) and any covariate columns;
- ``peaks``: one row per peak with ``study, x, y, z`` (MNI mm) and signed ``t`` (NaN when the
  statistic is unknown; then ``sign`` gives the direction);
- ``mask``: the analysis mask of the project (SDM-PSI writes ``sdm_mask.nii.gz`` into a project
  folder), or None;
- ``images``: the whole-brain statistical maps (t-maps, MNI, any grid) of the studies that have
  one, by study id (:mod:`analysis.sdm.inputs.statmaps`): exact effects wherever the map has a
  value, the peaks' bounds elsewhere.

Readers: :meth:`SDMDataset.from_sdm_project` (an SDM-PSI project folder),
:meth:`SDMDataset.from_tables` (validated ``studies.tsv`` / ``peaks.tsv`` of
:mod:`analysis.sdm.inputs.studies` and :mod:`analysis.sdm.inputs.peaks`), :meth:`SDMDataset.from_nimare`
(a NiMARE Dataset with t values and/or ``t``, ``z``, ``beta`` + ``se`` / ``varcope`` images);
:meth:`SDMDataset.to_nimare` goes the other way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.sdm.errors import DataError, DataErrors

#: the mask SDM-PSI writes into a project folder
SDM_MASK_FILE = "sdm_mask.nii.gz"
#: column names of the text study table → names of the engine's study table (in errors)
_STUDY_FIELD = {"n_patients": "n1", "n_controls": "n2", "correction": "t_thr",
                "threshold": "t_thr", "design": "n2"}


def check_dataset(studies: pd.DataFrame, peaks: pd.DataFrame, source: str = "SDMDataset", *,
                  warnings: list[str] | None = None, check_mask: bool = True) -> None:
    """Check the engine's typed tables with the rules of the compendium's text tables.

    The typed tables (``study, n1, n2, t_thr``; ``study, x, y, z, t, sign``, MNI) are written
    as the text of ``studies.tsv`` / ``peaks.tsv`` and go through the one rule set
    (:func:`analysis.sdm.inputs.studies.check_studies`, :func:`analysis.sdm.inputs.peaks.check_peaks`), so a
    NiMARE Dataset or Python tables meet the same bounds as a data folder or an SDM-PSI project
    (2 <= n <= 100,000 and integer, 0 < t_thr <= 100, finite non-zero |t| <= 100 agreeing with
    the sign, peaks within 20 mm of the brain; warnings for untidy but usable peaks).

    Parameters
    ----------
    studies, peaks : pandas.DataFrame
        The engine's tables.
    source : str
        Names the input in errors (``<source> studies`` / ``<source> peaks``, rows numbered
        from 1 in table order, fields by the engine's column names).
    warnings : list of str, optional
        Receives the warnings (logged when None).
    check_mask : bool
        Check peaks against the brain.

    Raises
    ------
    DataErrors
        Every problem, each naming the source, row and field.
    """
    from analysis.sdm.inputs.io import format_number
    from analysis.sdm.inputs.peaks import PEAK_COLUMNS, check_peaks
    from analysis.sdm.inputs.studies import check_studies

    n2 = pd.to_numeric(studies["n2"], errors="coerce").to_numpy(float)
    raw_s = pd.DataFrame({
        "study": [str(s) for s in studies["study"]],
        "design": ["two-sample" if np.isfinite(v) else "one-sample" for v in n2],
        "n_patients": [format_number(v) for v in studies["n1"]],
        "n_controls": [format_number(v) for v in studies["n2"]],
        "t_thr": [format_number(v) for v in studies["t_thr"]],
        "threshold": "",
    })
    if "contrasts_reported" in studies.columns:
        raw_s["contrasts_reported"] = [
            "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            for v in studies["contrasts_reported"]]
    raw_s.index = pd.RangeIndex(1, len(raw_s) + 1)
    s_file, p_file = f"{source} studies", f"{source} peaks"
    typed, errors = check_studies(raw_s, s_file)
    names = list(raw_s["study"])
    errors = [DataError(e.file, f"study {names[e.row - 1]!r}: {e.message}" if e.row else
                        e.message, row=e.row, field=_STUDY_FIELD.get(e.field, e.field))
              for e in errors]
    if not errors and len(peaks):
        t = pd.to_numeric(peaks["t"], errors="coerce").to_numpy(float)
        sign = pd.to_numeric(peaks["sign"], errors="coerce").to_numpy(float)
        study = [str(s) for s in peaks["study"]]
        pid: dict[str, int] = {}
        ids = [pid.__setitem__(s, pid.get(s, 0) + 1) or pid[s] for s in study]
        raw_p = pd.DataFrame({
            "study": study, "peak_id": [str(i) for i in ids],
            "sign": [format_number(v) if np.isfinite(v) else str(v) for v in sign],
            "x": [format_number(v) for v in peaks["x"]],
            "y": [format_number(v) for v in peaks["y"]],
            "z": [format_number(v) for v in peaks["z"]], "space": "MNI",
            "stat_type": ["none" if np.isnan(v) else "t" for v in t],
            "stat_value": ["" if np.isnan(v) else format_number(v) for v in t],
            "provenance": "", "note": ""}, columns=PEAK_COLUMNS)
        raw_p.index = pd.RangeIndex(1, len(raw_p) + 1)
        field_name = {"stat_value": "t"}
        own: list[str] = []
        _, perrs = check_peaks(raw_p, typed, p_file, check_mask=check_mask,
                               check_provenance=False, warnings=own)
        for e in perrs:
            errors.append(DataError(e.file, e.message, row=e.row,
                                    field=field_name.get(e.field, e.field)))
        own = [w.replace("field 'stat_value'", "field 't'") for w in own]
        if warnings is None:
            import logging

            for line in own:
                logging.getLogger(__name__).warning("%s", line)
        else:
            warnings.extend(own)
    if errors:
        raise DataErrors(errors)


def check_images(images: dict, studies: pd.DataFrame, source: str = "SDMDataset images",
                 kinds: dict | None = None, extra: dict | None = None) -> dict:
    """Read and check the statistical maps of a dataset as t-maps.

    Parameters
    ----------
    images : dict of str -> path or nibabel image
        Study id -> map.
    studies : pandas.DataFrame
        The checked study table (``n1``, ``n2``: degrees of freedom of z → t).
    source : str
        Names an in-memory map in errors (``<source> [<study>]``); a file is named by itself.
    kinds : dict of str -> str, optional
        Study id -> what its map holds (:data:`analysis.sdm.inputs.statmaps.MAP_KINDS`;
        default ``"t"``).
    extra : dict of str -> dict, optional
        Study id -> ``{"se": ...}`` or ``{"varcope": ...}`` for beta maps.

    Returns
    -------
    dict of str -> nibabel.Nifti1Image
        Checked t-maps.

    Raises
    ------
    DataErrors
        Every map's problem, each naming the file (or study) and field.
    """
    from analysis.sdm.inputs.statmaps import read_study_map
    from analysis.sdm.statistics.hedges import degrees_of_freedom

    rows = studies.set_index("study")
    out, errors = {}, []
    for sid, img in images.items():
        n1, n2 = float(rows.at[sid, "n1"]), float(rows.at[sid, "n2"])
        df = float(degrees_of_freedom(n1, n2 if np.isfinite(n2) else None))
        name = Path(img).name if isinstance(img, (str, Path)) else f"{source} [{sid}]"
        try:
            out[sid] = read_study_map(img, df, (kinds or {}).get(sid, "t"), name,
                                      **(extra or {}).get(sid, {}))
        except DataError as exc:
            errors.append(exc)
    if errors:
        raise DataErrors(errors)
    return out


def _nimare_images(dset, names: dict) -> tuple[dict, dict, dict]:
    """Each experiment's map in a NiMARE Dataset's ``images`` table, by preference
    ``t`` > ``z`` > ``beta`` + ``se`` > ``beta`` + ``varcope`` (paths; NaN cells skipped).
    """
    table = getattr(dset, "images", None)
    if table is None or not len(table):
        return {}, {}, {}

    def cell(rec, col):
        v = rec.get(col)
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or v == "" else v

    images, kinds, extra = {}, {}, {}
    for rec in table.to_dict("records"):
        sid = names.get(rec.get("id"))
        if sid is None:
            continue
        if cell(rec, "t"):
            images[sid], kinds[sid] = cell(rec, "t"), "t"
        elif cell(rec, "z"):
            images[sid], kinds[sid] = cell(rec, "z"), "z"
        elif cell(rec, "beta") and cell(rec, "se"):
            images[sid], kinds[sid] = cell(rec, "beta"), "beta+se"
            extra[sid] = {"se": cell(rec, "se")}
        elif cell(rec, "beta") and cell(rec, "varcope"):
            images[sid], kinds[sid] = cell(rec, "beta"), "beta+varcope"
            extra[sid] = {"varcope": cell(rec, "varcope")}
    return images, kinds, extra


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
    images : dict of str -> path or nibabel image, optional
        Study id -> its t-map (MNI, any grid and orientation; NaN or 0 outside the map), checked
        by :func:`analysis.sdm.inputs.statmaps.check_t_map` (errors name the file, or
        ``SDMDataset images``, and the field) and kept as float images.
    """

    studies: pd.DataFrame
    peaks: pd.DataFrame
    mask: object = None
    images: dict = field(default_factory=dict)
    #: True when the tables were already checked (by a reader of this class, or a subset)
    checked: bool = field(default=False, repr=False, compare=False)

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
        self.images = dict(self.images or {})
        unknown = set(self.images) - set(self.studies["study"])
        if unknown:
            raise ValueError(f"statistical maps for unknown studies: {sorted(unknown)}")
        if not self.checked:  # Python tables meet the bounds of every other entry point
            check_dataset(self.studies, self.peaks)
            self.images = check_images(self.images, self.studies)
            self.checked = True

    def __repr__(self) -> str:
        return (f"SDMDataset({len(self.studies)} studies, {len(self.peaks)} peaks"
                f"{f', {len(self.images)} maps' if self.images else ''}"
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
        images = {k: v for k, v in self.images.items() if k in keep}
        return SDMDataset(s, p, self.mask, images, checked=self.checked)

    # ------------------------------------------------------------------------------------
    # readers
    @classmethod
    def from_tables(cls, studies: pd.DataFrame, peaks: pd.DataFrame, mask=None, *,
                    checked: bool = False) -> SDMDataset:
        """From a validated study table and peak table (the output of
        :func:`~analysis.sdm.inputs.studies.check_studies` and
        :func:`~analysis.sdm.inputs.peaks.check_peaks`): peaks in MNI (``x_mni, y_mni, z_mni``).
        ``checked``: the tables come from those readers (not checked again).
        """
        p = peaks.drop(columns=["x", "y", "z"]).rename(
            columns={"x_mni": "x", "y_mni": "y", "z_mni": "z"})
        s = studies if "n2" in studies.columns else studies.assign(n2=np.nan)
        return cls(s.reset_index(drop=True), p.reset_index(drop=True), mask, checked=checked)

    @classmethod
    def from_sdm_project(cls, folder: str | Path, corrected_voxel_p: float = 0.05,
                         read_mask: bool = True) -> SDMDataset:
        """Any SDM-PSI project folder (``sdm_table.txt`` + peak files), one- or two-sample.

        The text tables of :func:`analysis.sdm.inputs.project.read_sdm_project` are typed and converted
        (Talairach to MNI, signed t) by the same checks as the compendium's own data
        (:func:`analysis.sdm.inputs.peaks.check_peaks`; its warnings are logged).
        The folder's ``sdm_mask.nii.gz`` (written by SDM-PSI) becomes the dataset's mask when
        present and ``read_mask``. A study's statistical map ``<study>.nii.gz`` / ``<study>.nii``
        (a t-map, or a z-map with NIfTI intent "z score"; :mod:`analysis.sdm.inputs.statmaps`)
        is read beside or instead of its peak file. SDM-PSI's pre-processed maps (``pp/``) are
        never read here.
        """
        import nibabel as nib

        from analysis.sdm.inputs.peaks import check_peaks
        from analysis.sdm.inputs.project import _typed_studies, read_sdm_project
        from analysis.sdm.inputs.statmaps import project_map_file

        folder = Path(folder)
        raw_s, raw_p = read_sdm_project(folder)
        studies = _typed_studies(raw_s, corrected_voxel_p)
        raw_p = raw_p.copy()
        raw_p.index = pd.RangeIndex(1, len(raw_p) + 1)
        peaks, errors = check_peaks(raw_p, studies, f"{folder.name}/peaks")
        if errors:
            raise DataErrors(errors)
        mask_path = folder / SDM_MASK_FILE
        mask = nib.load(str(mask_path)) if read_mask and mask_path.is_file() else None
        found, errors = {}, []
        for s in studies["study"]:
            try:
                found[s] = project_map_file(folder, s)
            except DataError as exc:
                errors.append(exc)
        if errors:
            raise DataErrors(errors)
        images = check_images({s: f for s, f in found.items() if f is not None}, studies)
        out = cls.from_tables(studies, peaks, mask, checked=True)
        out.images = images
        return out

    # ------------------------------------------------------------------------------------
    # NiMARE
    @classmethod
    def from_nimare(cls, dset, t_thr=None, t_column: str = "t") -> SDMDataset:
        """From a :class:`nimare.dataset.Dataset`: coordinates with signed t values and/or
        statistical maps.

        Parameters
        ----------
        dset : nimare.dataset.Dataset
            Coordinates with a ``t`` column (signed; NaN for an unknown statistic, then a
            ``sign`` column is required), metadata ``sample_sizes`` (``[n]`` one-sample,
            ``[n1, n2]`` two-sample) and, unless ``t_thr`` is given, ``t_thr``. An experiment
            with an image in ``dset.images`` becomes a map study
            (:mod:`analysis.sdm.inputs.statmaps`): its ``t`` image, else its ``z`` image
            (converted to t with equal one-tailed probability), else ``beta`` / ``se``
            (``t = beta / se``), else ``beta`` / ``varcope`` (``t = beta / sqrt(varcope)``).
            Everything is checked as every other entry point is (:func:`check_dataset`,
            :func:`check_images`); errors name the experiment (metadata row), the coordinate
            row or the image file, and the field.
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
        source = "NiMARE Dataset"
        coords = dset.coordinates
        meta = dset.metadata.set_index("id")
        names = dict(zip(dset.metadata["id"], dset.metadata["id"], strict=True))
        if "study_id" in dset.metadata.columns and dset.metadata["study_id"].is_unique:
            names = dict(zip(dset.metadata["id"], dset.metadata["study_id"], strict=True))
        if t_column not in coords.columns:
            if len(coords):
                raise DataError(source, f"the coordinates have no {t_column!r} column (signed t "
                                "values are needed for SDM)", field=t_column)
            coords = coords.assign(**{t_column: np.nan, "sign": np.nan})
        rows, errors = [], []
        for k, sid in enumerate(meta.index, start=1):
            def bad(msg, fld="sample_sizes", k=k, sid=sid):
                errors.append(DataError(f"{source} metadata", f"experiment {sid!r}: {msg}",
                                        row=k, field=fld))
            sizes = meta.at[sid, "sample_sizes"] if "sample_sizes" in meta.columns else None
            if sizes is None or (np.ndim(sizes) == 0 and pd.isna(sizes)):
                bad("missing ([n] one-sample, [n1, n2] two-sample)")
                continue
            try:
                sizes = [float(x) for x in np.atleast_1d(sizes)]
            except (TypeError, ValueError):
                bad(f"{sizes!r} is not a list of numbers")
                continue
            if len(sizes) not in (1, 2):
                bad(f"{len(sizes)} values {sizes}; expected [n] (one-sample) or [n1, n2] "
                    "(two-sample)")
                continue
            thr = meta.at[sid, "t_thr"] if "t_thr" in meta.columns else t_thr
            if thr is None or (np.ndim(thr) == 0 and pd.isna(thr)):
                thr = t_thr
            try:
                thr = float(thr)
            except (TypeError, ValueError):
                bad(f"t_thr {thr!r} is not a number (metadata or argument)", "t_thr")
                continue
            rows.append({"study": names[sid], "n1": sizes[0],
                         "n2": sizes[1] if len(sizes) > 1 else np.nan, "t_thr": thr})
        t = pd.to_numeric(coords[t_column], errors="coerce").to_numpy(float)
        if "sign" in coords.columns:
            sign = pd.to_numeric(coords["sign"], errors="coerce").to_numpy(float)
        else:
            sign = np.sign(t)
        for i in np.flatnonzero(~np.isin(sign, (1.0, -1.0))):
            errors.append(DataError(f"{source} coordinates", "needs a non-zero t or a sign of "
                                    "+1/-1", row=int(i) + 1, field="sign"))
        if errors:
            raise DataErrors(errors)
        studies = pd.DataFrame(rows, columns=["study", "n1", "n2", "t_thr"])
        peaks = pd.DataFrame({"study": coords["id"].map(names).to_numpy(),
                              "x": coords["x"].to_numpy(float), "y": coords["y"].to_numpy(float),
                              "z": coords["z"].to_numpy(float), "t": t,
                              "sign": sign.astype(np.int64)})
        check_dataset(studies, peaks, source)
        images, kinds, extra = _nimare_images(dset, names)
        images = check_images(images, studies, f"{source} images", kinds, extra)
        return cls(studies, peaks, images=images, checked=True)

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

        from analysis.sdm.heap import frozen_heap

        # NiMARE 0.22's estimators still take a Dataset; its mask goes through nilearn, which
        # forces full garbage collections (frozen_heap)
        with warnings.catch_warnings(), frozen_heap():
            warnings.filterwarnings("ignore", "nimare.dataset.Dataset is deprecated",
                                    FutureWarning)
            return Dataset(data, target=target)
