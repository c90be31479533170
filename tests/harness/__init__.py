"""Test harnesses shared by the deploy tests and ``scripts/benchmark_pacs.py``: a private Orthanc on loopback and
untrained copies of bundles. They are test infrastructure, not part of the ``dissect_monai`` package."""
