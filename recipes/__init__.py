"""Compute-node side: the training entry every rank runs (python -m recipes.pretrain <megatron argv>).

No Hydra here: each rank receives the plain Megatron argv the launcher wrote to the run directory.
"""
