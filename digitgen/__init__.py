"""digitgen: digit generation with a VAE and an autoencoder, run as a Prefect pipeline."""

import atexit
import gc

# A process that ran the pipeline holds about 800,000 objects (torch, Prefect, MLflow, Great Expectations). CPython's
# last garbage collection at exit walks them all: 2.4 s of every run's exit on one thread, freeing memory the system
# takes back anyway. Frozen objects are skipped (logs, events and files are flushed by their own exit handlers).
atexit.register(gc.freeze)
