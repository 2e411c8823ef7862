"""fastig against Captum, side by side in one run: `fastig bench` (see suite.py and scenarios.py)."""
