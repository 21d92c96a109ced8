"""The engine's inputs: studies and peaks, validated once, and SDM-PSI project folders.

Modules
-------
:mod:`~analysis.sdm.inputs.dataset`
    :class:`~analysis.sdm.inputs.dataset.SDMDataset`, the engine's input (a study table, a
    peak table in MNI, an optional mask), from Python tables, an SDM-PSI project or NiMARE.
:mod:`~analysis.sdm.inputs.project`
    SDM-PSI project folders (``sdm_table.txt`` and one peak file per study): reading and
    writing.
:mod:`~analysis.sdm.inputs.studies`, :mod:`~analysis.sdm.inputs.peaks`
    The one rule set of the text study and peak tables (SDM-PSI's formats and the plausibility
    bounds), and the canonical text form of a peak table.
:mod:`~analysis.sdm.inputs.coords`
    Talairach/MNI conversions and statistic conversions (z, p to t).
:mod:`~analysis.sdm.inputs.io`
    Text tables read as text, atomic writes, canonical numbers.
"""
