"""The single configuration of the compendium.

Every preregistered parameter lives in ``analysis/config.yaml``; this module loads it. The
per-stage random streams derived from its one seed are the engine's
(:func:`analysis.sdm.rng.derive_rng`: one stream per stage name, so adding a stage never changes
the numbers of another; compare NiMARE PR #1152).

The configuration is checked against a typed schema (:class:`ConfigSchema`, pydantic, strict:
no silent conversion) when it is read and after every override (:func:`load_config`,
:func:`parse_overrides` for ``run --set section.key=value``): an unknown or misspelt key, or a
value of the wrong type or range, is a :class:`analysis.errors.ConfigError` naming the dotted
key, raised before any stage runs. Keys that cannot change a result (:data:`RESULT_NEUTRAL`,
e.g. the number of parallel jobs) are left out of the stage keys (:func:`result_config`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from analysis.errors import ConfigError

CONFIG_PATH = Path(__file__).with_name("config.yaml")

#: The only modules (paths inside the package) that load the configuration, i.e. call
#: :func:`load_config` (this module alone opens ``config.yaml``): the pipeline runner, which
#: hands the loaded configuration to the stages (they read it through
#: :mod:`analysis.stages.params`), and the entry points that run the engine outside the
#: pipeline: the commands of ``python -m analysis`` (``run`` merges ``--set``/``--config``) and
#: the benchmarks of ``make bench``. Every other module receives the configuration, or the
#: values it needs, as arguments; ``tests/test_architecture.py`` holds the package to this list
#: and the README states it.
CONFIG_READERS = (
    "pipeline.py",
    "commands/characterise.py",
    "commands/export_sdm.py",
    "commands/import_sdm.py",
    "commands/meta.py",
    "commands/run.py",
    "commands/simulate_peaks.py",
    "commands/validate_data.py",
    "commands/validate_sdm.py",
    "bench/calibration.py",
    "bench/characterisation_macm.py",
    "bench/design_replicates.py",
    "bench/replicate_parts.py",
    "bench/sdm_fit.py",
    "bench/psi.py",
    "bench/ibma.py",
    "bench/scaling.py",
)

#: Dotted keys that cannot change any result (outputs are byte-identical whatever their value):
#: left out of the stage keys, so changing them reuses every cached stage.
RESULT_NEUTRAL = ("sdm.psi.n_jobs", "manuscript")

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Prob = Annotated[float, Field(gt=0, lt=1)]
Connectivity = Literal[6, 18, 26]


def _nonzero(v: int) -> int:
    if v == 0:
        raise ValueError("must not be 0 (a number of workers: 1, 2, ... or -1 for all cores)")
    return v


#: joblib's n_jobs: a positive count, or -1 (all cores), -2 (all but one)...; never 0
NJobs = Annotated[int, AfterValidator(_nonzero)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DataConfig(_Section):
    corrected_voxel_p: Prob
    mask_tolerance_mm: NonNegFloat
    t_below_threshold_tolerance: NonNegFloat


class TemplateConfig(_Section):
    s0: NonNegFloat
    beta: float
    gamma: NonNegFloat


class ThresholdConfig(_Section):
    p_uncorrected: Prob
    peak_z: float
    min_cluster_voxels: PosInt
    connectivity: Connectivity


class PsiConfig(_Section):
    reml_iterations: PosInt
    reml_tol: PosFloat
    subject_fwhm_mm: NonNegFloat
    tfce_subject_fwhm_mm: PosFloat | None
    chunk_size: PosInt
    voxel_block: PosInt
    backend: Literal["numpy", "numba", "cupy"]
    precision: Literal["single", "double"]
    n_jobs: NJobs


class RobustnessConfig(_Section):
    fwe_alpha: Prob
    jackknife_group: str
    subgroup_column: str
    subgroup_min_studies: PosInt
    metaregression_permutations: NonNegInt


class TfceConfig(_Section):
    E: PosFloat
    H: PosFloat
    n_steps: PosInt
    connectivity: Connectivity


class SdmConfig(_Section):
    fwhm_mm: PosFloat
    anisotropy: NonNegFloat
    mask: Literal["sdm_gray_matter", "mni152_gray_matter"]
    unknown_peak_mode: Literal["corrected", "sdm621"]
    path_model: str
    combine: str
    kernel_template: Literal["enge_fit", "gray_matter", "uniform"]
    outside_stretch: PosFloat
    outside_radius_mm: PosFloat
    template: TemplateConfig
    imputations: PosInt
    imputations_quick: PosInt
    analysis_roi_radius_mm: PosFloat | None
    heterogeneity: Literal["dl", "reml"]
    leave_n_out: Literal["auto"] | NonNegInt
    threshold: ThresholdConfig
    local_peak_min_distance_mm: NonNegFloat
    permutations: NonNegInt
    permutations_quick: NonNegInt
    psi: PsiConfig
    robustness: RobustnessConfig
    tfce: TfceConfig
    covariates: list[str]


class SimulationValidationConfig(_Section):
    n_range: Annotated[list[PosInt], Field(min_length=2, max_length=2)]
    p_uncorrected: Prob


class SimulationConfig(_Section):
    generator_version: str
    smoothness_fwhm_mm: PosFloat
    heterogeneity_tau: NonNegFloat
    local_max_min_distance_mm: NonNegFloat
    local_max_per_cluster: PosInt
    effect_fwhm_mm: PosFloat
    cluster_connectivity: Connectivity
    cluster_extent_voxels: NonNegInt
    max_peaks_per_study: PosInt
    validation: SimulationValidationConfig


class DesignConfig(_Section):
    null_replicates: PosInt
    null_replicates_quick: PosInt
    sensitivity_replicates: PosInt
    sensitivity_replicates_quick: PosInt
    effect_sizes: Annotated[list[NonNegFloat], Field(min_length=1)]
    effect_sizes_quick: Annotated[list[NonNegFloat], Field(min_length=1)]
    imputations: Annotated[int, Field(ge=2)]
    imputations_quick: Annotated[int, Field(ge=2)]
    sensitivity_roi_radius_mm: PosFloat | None
    match_distance_mm: PosFloat
    confidence: Prob
    bootstrap: PosInt
    tfce: bool


class CharacterisationConfig(_Section):
    seeds_published: list[Annotated[list[float], Field(min_length=3, max_length=3)]]
    seeds_published_direction: list[Literal["increase", "decrease"]]
    macm_radius_mm: PosFloat
    macm_kernel_radius_mm: PosFloat
    macm_fdr_q: Prob
    macm_min_study_fraction: Annotated[float, Field(ge=0, lt=1)]
    macm_old_rule_threshold: Prob
    rsfc_r_threshold: Annotated[float, Field(ge=-1, le=1)]
    rsfc_n_subjects: PosInt
    top_terms: PosInt
    rsfc_max_vertex_mm: NonNegFloat
    conjunction_min_cluster_voxels: NonNegInt
    yeo7_networks: Annotated[list[str], Field(min_length=7, max_length=7)]
    decoding_min_term_studies: NonNegInt
    decoding_term_category: str
    decoding_lda_presence: Prob
    decoding_voxel_level: bool


class ManuscriptConfig(_Section):
    test_overrides: dict[str, Any]
    test_skip_stages: list[str]


class ConfigSchema(_Section):
    """The whole configuration: every section and key of ``config.yaml``, typed."""

    seed: NonNegInt
    data: DataConfig
    sdm: SdmConfig
    simulation: SimulationConfig
    design: DesignConfig
    characterisation: CharacterisationConfig
    manuscript: ManuscriptConfig


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (sub)section at ``loc`` (for "did you mean" hints)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def validate_config(cfg: Any, source: str = "configuration",
                    _with_test_overrides: bool = True) -> dict[str, Any]:
    """Check a configuration against :class:`ConfigSchema`; return it unchanged.

    Parameters
    ----------
    cfg : dict
        The whole configuration.
    source : str
        Where it came from (named in the error).

    Raises
    ------
    ConfigError
        The first unknown key (with the closest known key), missing key or wrong value, as
        its dotted path.
    """
    if not isinstance(cfg, dict):
        raise ConfigError("<root>", f"expected a mapping of sections, got {type(cfg).__name__}",
                          source)
    try:
        ConfigSchema.model_validate(cfg)
    except ValidationError as exc:
        # an unknown key first: a misspelt key also makes the right one "missing"
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            known = _known_keys(ConfigSchema, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {known}"
            raise ConfigError(key, f"unknown key{hint}", source) from None
        if err["type"] == "missing":
            raise ConfigError(key, "required key is missing", source) from None
        raise ConfigError(key, f"{err['msg']} (got {err.get('input')!r})", source) from None
    tests = cfg["manuscript"]["test_overrides"]
    if tests and _with_test_overrides:  # the test suite's overrides obey the same schema
        merged = copy.deepcopy(cfg)
        merge(merged, copy.deepcopy(tests))
        validate_config(merged, f"{source} (manuscript.test_overrides)", False)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML 1.2 requires keys to
    be unique; PyYAML would keep the last value silently).
    """

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # reported by the base constructor
            if key in seen:
                raise ConfigError(
                    str(key), f"key given twice in one mapping (line {seen[key]} and line "
                    f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: str | Path) -> Any:
    """Read a YAML configuration file; every problem is a :class:`ConfigError` naming the file.

    Refused: a missing file, a folder, a file that is not UTF-8 text (e.g. binary), invalid YAML
    and a key given twice in one mapping (named with both lines).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError("<file>", "is a folder, not a YAML file", str(path))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("<file>", "file not found", str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"not a UTF-8 text file (byte {exc.start}: {exc.reason}); "
                          "a YAML configuration file is expected", str(path)) from None
    except OSError as exc:
        raise ConfigError("<file>", exc.strerror or type(exc).__name__, str(path)) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.message, str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"not valid YAML ({' '.join(str(exc).split())})",
                          str(path)) from None


@lru_cache(maxsize=1)
def _load_default() -> dict[str, Any]:
    cfg = read_yaml_file(CONFIG_PATH)
    return validate_config(cfg, CONFIG_PATH.name)


def load_config(overrides: dict[str, Any] | None = None,
                source: str = "override") -> dict[str, Any]:
    """Return a fresh copy of the configuration, with optional nested overrides (validated).

    Parameters
    ----------
    overrides : dict, optional
        Nested mapping merged over the defaults, e.g. ``{"sdm": {"imputations": 5}}``.
    source : str
        Name of the overrides' origin in errors (e.g. ``--set``).

    Returns
    -------
    dict
        The configuration.

    Raises
    ------
    ConfigError
        ``config.yaml`` or the merged overrides break the schema (unknown key, wrong type).
    """
    cfg = copy.deepcopy(_load_default())
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError("<root>", "overrides must be a mapping", source)
        merge(cfg, copy.deepcopy(overrides))
        validate_config(cfg, source)
    return cfg


def parse_overrides(assignments: list[str], source: str = "--set") -> dict[str, Any]:
    """Nested overrides from ``section.key=value`` strings (values read as YAML scalars/lists).

    ``["sdm.imputations=20", "sdm.psi.backend=numpy"]`` gives
    ``{"sdm": {"imputations": 20, "psi": {"backend": "numpy"}}}``. The result is validated
    by :func:`load_config` like any override.

    Raises
    ------
    ConfigError
        An assignment without ``=`` or with an empty key, or a value that is not YAML.
    """
    out: dict[str, Any] = {}
    for text in assignments or []:
        key, sep, value = text.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not p for p in parts):
            raise ConfigError(key or text, "expected section.key=value", source)
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(key, f"value {value!r} is not valid YAML", source) from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(key, "assigned both as a value and as a section", source)
        node[parts[-1]] = parsed
    return out


def result_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The configuration without the :data:`RESULT_NEUTRAL` keys (what stage keys hash)."""
    out = copy.deepcopy(cfg)
    for dotted in RESULT_NEUTRAL:
        node = out
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def merge(base: dict, extra: dict) -> None:
    """Merge ``extra`` into ``base`` in place, nested dictionaries key by key."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def config_hash(cfg: dict[str, Any], *sections: str) -> str:
    """Stable hash of the given configuration sections (all when none are given)."""
    part = {k: cfg[k] for k in sections} if sections else cfg
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]
