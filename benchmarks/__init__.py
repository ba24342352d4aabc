"""pytest-benchmark files, one per op or model; helpers in conftest.py."""
