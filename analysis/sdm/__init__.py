"""Open implementation of Seed-based d Mapping with Permutation of Subject Images (SDM-PSI).

References
----------
Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage 186:174-184.
"""
