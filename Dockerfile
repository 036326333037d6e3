# digitgen for a Prefect Docker or Kubernetes work pool, and for Dask workers: the project's code and packages
# (CPU PyTorch). Build from the repository root:  docker build -t digitgen:0.1.0 .
# Data and outputs live outside the image, on volumes: /data (the data root) and /artifacts (run folders).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch first, pinned as in pyproject.toml, as CPU wheels (torch==2.14.1 is then satisfied by 2.14.1+cpu).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

# The source stays in /opt/digitgen as well as being installed: deployments' entrypoints (flows/pipeline.py:...)
# are paths relative to the flow run's working directory.
WORKDIR /opt/digitgen
COPY pyproject.toml README.md prefect.yaml ./
COPY digitgen/ digitgen/
COPY flows/ flows/
COPY tasks/ tasks/
COPY models/ models/
RUN pip install . && digitgen --help > /dev/null

ENV PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DIGITGEN_DATA_ROOT=/data \
    DIGITGEN_OUT=/artifacts
VOLUME ["/data", "/artifacts"]

CMD ["digitgen", "--help"]
