"""The README's Python API example runs as written, with small settings."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest

from analysis.paths import REPO_ROOT

#: the README's numbers -> the test's (same code otherwise)
SMALL = {"imputations=50": "imputations=2", "n_iters=1000": "n_iters=3"}


def _example() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the Python API section has an example"
    code = blocks[0]  # the example; the later blocks are fragments (test_readme_fragments_import)
    for big, small in SMALL.items():
        assert big in code, big
        code = code.replace(big, small)
    return code


@pytest.mark.timeout(600)
def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys, mirror):
    from analysis.sdm.inputs import dataset as dataset_mod
    from analysis.sdm.maps.space import MaskSpace

    real = dataset_mod.SDMDataset.from_sdm_project.__func__

    def small(cls, folder, **kw):
        # 6 studies and a 14 mm region around two of SDM-PSI's reported peaks (small settings)
        dset = real(cls, folder, **kw)
        space = MaskSpace(dset.mask)
        centres = np.array([[-42.0, 32.0, 16.0], [-6.0, 20.0, 64.0]])
        d = np.sqrt(((space.xyz[:, None, :] - centres[None]) ** 2).sum(-1)).min(1)
        roi = np.zeros(space.shape, np.uint8)
        roi[tuple(space.ijk[d <= 14.0].T)] = 1
        near = dset.peaks.assign(d=np.sqrt(((dset.peaks[["x", "y", "z"]].to_numpy(float)[:, None]
                                            - centres[None]) ** 2).sum(-1)).min(1))
        keep = near.sort_values("d")["study"].drop_duplicates().head(6)
        out = dset.subset(keep)
        out.mask = nib.Nifti1Image(roi, dset.mask.affine)
        return out

    monkeypatch.setattr(dataset_mod.SDMDataset, "from_sdm_project", classmethod(small))
    monkeypatch.chdir(tmp_path)
    exec(compile(_example(), "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "sdm_z" in out and "leave-one-out" in out
    # one-sample studies: the directions are the sign of the effect, in both tables
    assert "Positive" in out and "Patients" not in out
    written = sorted(p.name for p in (tmp_path / "enge_mod1").iterdir())
    assert "mod1_z.nii.gz" in written and "mod1_corrp_voxel.nii.gz" in written
    assert "mod1_jackknife.tsv" in written and "mod1_permutation_maxima.tsv" in written


def test_readme_fragments_compile_and_their_imports_resolve():
    """The Python API section's later blocks (fragments such as the Dask cluster's) are valid
    Python, and every name they import exists."""
    import importlib

    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    fragments = re.findall(r"```python\n(.*?)```", section, flags=re.S)[1:]
    assert fragments, "the Python API section has no fragment after its example"
    for block in fragments:
        compile(block, "README.md", "exec")
        for mod, names in re.findall(r"^from (\S+) import (.+)$", block, flags=re.M):
            module = importlib.import_module(mod)
            for name in (n.split(" as ")[0].strip() for n in names.split(",")):
                assert hasattr(module, name), f"README imports {name} from {mod}"
