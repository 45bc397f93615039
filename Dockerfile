# The one image every PrecisionOps service runs (api, worker, gpu-worker, serve, dashboard).
# TORCH_INDEX picks the torch build: the CPU wheels by default; for the `gpu` profile build with
#   docker compose build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

# curl serves the compose health checks; build-essential lets Triton compile its launchers on GPU hosts.
RUN apt-get update && apt-get install -y --no-install-recommends curl build-essential \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the chosen index, so the project's `torch>=2.4` is already satisfied.
RUN pip install --index-url "$TORCH_INDEX" "torch==2.13.0"

COPY pyproject.toml README.md alembic.ini ./
COPY controlplane controlplane
COPY runtime runtime
COPY kernels kernels
COPY dashboard dashboard
COPY migrations migrations
COPY assets assets
RUN pip install -e ".[kernels]"

RUN useradd --create-home --uid 1000 pops && mkdir -p /var/lib/pops && chown -R pops /var/lib/pops /app
USER pops
CMD ["pops", "--help"]
