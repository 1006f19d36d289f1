"""Experiment drivers (studies on the simulators) and their result files (``results/``).

Each module is a CLI (console scripts ``occ_audit_exp_*`` in setup.py) that trains and scores through the
trainers in :mod:`training`, and writes a JSON/JSONL result beside it.
"""
