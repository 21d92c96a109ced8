"""What a reader can verify in He et al. (2024) from the published numbers alone.

Modules
-------
table3
    Internal consistency of the paper's Table 3 (meta-analytic clusters): p from SDM-Z, the
    effect sizes and standard errors the samples allow, I² and Egger's p against the text,
    cluster extents against the recreation kernel (in the spirit of statcheck, Nuijten et al.
    2016).
"""
