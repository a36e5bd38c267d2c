"""moe-launch: compose, validate, map and run Megatron-Core MoE pretraining jobs.

Login-node side: imports neither torch nor megatron at module load; megatron (and so torch) is
imported lazily, only to run Megatron's own argument parser and validator on the generated argv.
"""
__version__ = "0.1.0"
