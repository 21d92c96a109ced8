"""Network and behavioural characterisation of meta-analytic peaks (He et al. 2024, Figs 3-4).

Modules
-------
databases
    Neurosynth v7 / NeuroQuery v1 coordinates, the 2 mm study x voxel incidence matrix (cached).
macm
    Neurosynth-style meta-analytic co-activation maps (association test, FDR q = 0.01).
connectivity
    Resting-state connectivity maps: user-supplied, or the HCP parcel-level substitute.
conjunction
    Conjunctions, overlaps, cluster tables and Yeo-7 network shares.
decoding
    BAT-like behavioural profiling (Fisher's exact test) with NeuroQuery terms and LDA-50 topics.
stage
    The pipeline stage ``characterisation``.
"""
