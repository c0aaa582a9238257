"""Test-suite settings: under CI (CI=true) hypothesis draws the same examples every run, so a
red CI always means a reproducible failure; locally it explores new examples each run."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
