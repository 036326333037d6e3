"""digitgen: digit generation with a VAE and an autoencoder, run as a Prefect pipeline."""

import atexit
import gc

# A process that runs the pipeline imports about a million objects (torch, Prefect, MLflow, scikit-learn). CPython
# walks them all in a full collection after every 10 collections of the middle generation, once the objects kept
# have grown by a quarter, as they keep doing while the imports go on: 10 full collections took 1.8 s of a candidate
# run on one thread (`digitgen run`, conftest.CANDIDATE). After every 100 instead: one, 0.26 s. The young generations
# are collected as often as before, so short-lived garbage goes as soon as it did.
_young, _middle, _full = gc.get_threshold()
gc.set_threshold(_young, _middle, max(_full, 100))

# CPython's last garbage collection at exit walks those objects again: 2.4 s of every run's exit on one thread, freeing
# memory the system takes back anyway. Frozen objects are skipped (logs, events and files are flushed by their own
# exit handlers).
atexit.register(gc.freeze)
