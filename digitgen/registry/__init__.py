"""The registry: MLflow's store, runs, registered models and their `champion` alias (tracking.py), the locks of one
host's writers and champion decisions (locks.py), the model gate's decision (gate.py), a run folder's MLflow record
(run_record.py), and the JSON champion records of the days before MLflow, read once to import them (records.py).
Never imports Prefect."""
