# Makes notebooks/conftest.py import as "notebooks.conftest", so it does not shadow tests/conftest.py
# (tests do `from conftest import ...`).
