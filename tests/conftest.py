from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# `ci`: more examples, no deadline (shared, noisy machines); `dev`: quick.
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
