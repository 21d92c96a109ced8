"""Reproducible compendium for He et al. (2024), pain-empathy meta-analysis.

The package implements the paper's pipeline: the data layer (studies and peaks with provenance),
an open SDM-PSI engine, network and behavioural characterisation of the result peaks, and every
table, figure and in-text number of the manuscript.
"""

import logging

__version__ = "0.1.0"

LGR = logging.getLogger("analysis")
LGR.addHandler(logging.NullHandler())
