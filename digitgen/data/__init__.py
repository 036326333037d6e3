"""Data management: each dataset described once (datasets.py), its files found, checked, staged and loaded
(loading.py), dataset versions and their lineage (versions.py), new labelled batches and their intake checks
(batches.py), and the Great Expectations suite every split and batch passes (validation.py). Never imports Prefect."""
