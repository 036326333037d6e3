"""Figures and reports: the PNG figures of a run, a batch and a sweep (plots.py), and the run report's markdown
(report.py). Never imports Prefect."""
