"""Entry points: `python -m experiments.train`, `experiments.evaluate`, `experiments.compose`."""
