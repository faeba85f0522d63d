"""Loaded by Python at start-up in test subprocesses that have this folder on PYTHONPATH (see studio_faults)."""
import os

if os.environ.get("LORASTUDIO_TEST_FAULTS"):
    import studio_faults

    studio_faults.install(os.environ["LORASTUDIO_TEST_FAULTS"])
