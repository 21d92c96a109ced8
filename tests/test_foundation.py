"""Configuration, seeds, atomic writes, the fetcher and the stage runner."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from analysis import config, fetch, io, paths, pipeline
from analysis.sdm.rng import derive_rng


def test_config_holds_preregistered_parameters():
    cfg = config.load_config()
    assert cfg["sdm"]["fwhm_mm"] == 20
    assert cfg["sdm"]["threshold"]["p_uncorrected"] == 0.0025
    assert cfg["sdm"]["threshold"]["min_cluster_voxels"] == 11  # k > 10
    assert cfg["sdm"]["imputations"] == 50


def test_stage_streams_are_reproducible_and_independent():
    a1 = derive_rng(1, "meta").random(5)
    a2 = derive_rng(1, "meta").random(5)
    b = derive_rng(1, "robustness").random(5)
    c = derive_rng(2, "meta").random(5)
    np.testing.assert_array_equal(a1, a2)
    assert not np.allclose(a1, b)
    assert not np.allclose(a1, c)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_saved_figures_do_not_depend_on_the_process_savefig_settings(tmp_path):
    """Importing NiMARE sets ``savefig.bbox: tight`` and ``savefig.dpi: 100`` for the whole
    process; a figure saved afterwards must have the same size and bytes as before."""
    import matplotlib
    import matplotlib.pyplot as plt

    def draw(stem):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, 1])
        ax.set_title("a title")
        for suffix in (".png", ".svg"):
            io.save_figure(fig, tmp_path / f"{stem}{suffix}")
        plt.close(fig)

    draw("default")
    with matplotlib.rc_context({"savefig.bbox": "tight", "savefig.dpi": 100}):
        draw("changed")
    for suffix in (".png", ".svg"):
        assert (tmp_path / f"default{suffix}").read_bytes() == \
            (tmp_path / f"changed{suffix}").read_bytes(), suffix


def test_fetch_rejects_unknown_and_corrupt(tmp_path, monkeypatch):
    with pytest.raises(fetch.FetchError, match="not in the dataset registry"):
        fetch.fetch_file("nope/file.txt")
    rel = "atlases/cbig_network_correspondence/TY7.nii.gz"
    bad = tmp_path / "mirror" / rel
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the real file")
    monkeypatch.setenv("PAINEMP_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(fetch.FetchError, match="SHA-256"):
        fetch.fetch_file(rel)


def test_fetch_offline_without_mirror_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("PAINEMP_MIRROR", raising=False)
    monkeypatch.setenv("PAINEMP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(fetch.FetchError, match="neither in the mirror"):
        fetch.fetch_file("atlases/cbig_network_correspondence/TY7.nii.gz", download=False)


def test_fetch_reads_mirror_in_place(mirror):
    rel = "atlases/cbig_network_correspondence/TY7.nii.gz"
    assert fetch.fetch_file(rel) == mirror / rel


def _toy_stage(calls):
    def produce(ctx):
        calls.append(ctx.stage)
        ctx.out("tables/toy.tsv").write_text("a\n1\n")
        return {"n": 1, "r": float(ctx.rng().random())}

    return produce


def test_stage_runner_caches_and_is_atomic(tmp_path, monkeypatch):
    calls = []
    stage = pipeline.Stage("toy", "x:y", inputs=["in.txt"], sources=["config.py"])
    monkeypatch.setattr(pipeline.Stage, "function", lambda self: _toy_stage(calls))
    monkeypatch.setattr(pipeline, "STAGES", [stage])
    data, results = tmp_path / "data", tmp_path / "results"
    data.mkdir()
    (data / "in.txt").write_text("1")
    kw = dict(data_dir=data, results_dir=results)
    assert pipeline.run_stages(**kw) == {"toy": "ran"}
    first = json.loads((results / "values.json").read_text())
    assert pipeline.run_stages(**kw) == {"toy": "cached"}
    (data / "in.txt").write_text("2")
    assert pipeline.run_stages(**kw) == {"toy": "ran"}
    assert json.loads((results / "values.json").read_text()) == first  # same seed, same numbers
    # a corrupted output invalidates the cache
    (results / "tables/toy.tsv").write_text("tampered")
    assert pipeline.run_stages(**kw) == {"toy": "ran"}

    def failing(ctx):
        ctx.out("tables/new.tsv").write_text("x")
        raise RuntimeError("stage failed")

    monkeypatch.setattr(pipeline.Stage, "function", lambda self: failing)
    with pytest.raises(RuntimeError):
        pipeline.run_stages(force=True, **kw)
    assert not (results / "tables/new.tsv").exists()
    assert not (results / ".staging").exists()


def test_stage_code_hash_follows_imports_only(tmp_path, monkeypatch):
    """A stage's key covers the package modules its target imports (transitively, also inside
    functions), and nothing else: editing the renderer must not invalidate the permutations."""
    shutil.copytree(paths.PACKAGE_DIR, tmp_path / "analysis",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(paths, "PACKAGE_DIR", tmp_path / "analysis")
    rel = {str(f.relative_to(tmp_path / "analysis"))
           for f in pipeline.module_closure("analysis.stages.robustness")}
    assert {"sdm/inference/permutation.py", "sdm/inference/tfce.py", "sdm/diagnostics/jackknife.py", "stages/params.py",
            "stages/meta.py", "__init__.py", "sdm/__init__.py"} <= rel
    assert not rel & {"render.py", "manuscript_values.py", "cli.py", "characterisation/macm.py"}

    stage = pipeline.Stage("robustness", "analysis.stages.robustness:produce")
    cfg = {"seed": 1}

    def key():
        return pipeline.stage_key(stage, cfg, tmp_path, False, {})

    k0 = key()
    (tmp_path / "analysis/render.py").write_text("# edited\n")
    assert key() == k0
    tfce = tmp_path / "analysis/sdm/inference/tfce.py"  # imported by permutation.py, not by the stage
    tfce.write_text(tfce.read_text() + "\n# edited\n")
    assert key() != k0


def test_paper_bench_reads_stage_times_from_manifests(tmp_path, capsys):
    from analysis.bench.paper import stage_seconds
    from analysis.cli import main

    (tmp_path / ".stages").mkdir()
    (tmp_path / ".stages" / "meta.json").write_text('{"key": "k", "seconds": 12.5}')
    (tmp_path / ".stages" / "run.lock").write_text("1")
    assert stage_seconds(tmp_path) == {"meta": 12.5}
    assert main(["bench", "--list"]) == 0
    assert "paper:" in capsys.readouterr().out
