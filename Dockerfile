# syntax=docker/dockerfile:1
# One image for every process of the KB task manager; the command picks it:
#   python -m services.api | python -m services.worker --stage <stage> | python -m services.dispatcher
#   taskmgr migrate (one-off)
# Build: docker build -t kb-task-manager .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# torch comes from PyTorch's CPU-only index: PyPI's Linux wheel pulls the CUDA
# libraries (several GB) that no process here uses. Point at a mirror if needed.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# --- stage 1: build wheels for the project and every dependency ---------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A compiler only for dependencies without a wheel for this platform; it stays in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# torch first, from the CPU index only, at the version pyproject.toml pins; then the
# project with that wheel as a constraint, so the resolver cannot swap in PyPI's CUDA build.
RUN torch_pin="$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')" \
 && test -n "$torch_pin" \
 && pip wheel --wheel-dir /wheels --no-deps --index-url "${TORCH_INDEX_URL}" "$torch_pin" \
 && ls /wheels/torch-*.whl | sed -E 's#.*/torch-([^-]+)-.*#torch==\1#' > /tmp/torch-cpu.txt \
 && grep -q '+cpu' /tmp/torch-cpu.txt \
 && pip wheel --wheel-dir /wheels --find-links /wheels --constraint /tmp/torch-cpu.txt . \
 # The bundled PostgreSQL (pgserver) is for laptops without POSTGRES_HOST; a
 # container always points at a real server, so it stays out of the image.
 && rm -f /wheels/pgserver-*.whl

# --- stage 2: the runtime, wheels only, no compiler, not root -----------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    ENVIRONMENT=production \
    PORT=8084 \
    METRICS_PORT=9100 \
    UPLOAD_ROOTS=/data/uploads
# The preprocess worker's tools: antiword reads legacy Word (.doc), Tesseract OCRs scans and images.
RUN apt-get update \
 && apt-get install -y --no-install-recommends antiword tesseract-ocr tesseract-ocr-eng \
    tesseract-ocr-chi-sim tesseract-ocr-chi-tra \
 && rm -rf /var/lib/apt/lists/*
# The wheels were resolved together in the build stage: install exactly those.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl \
 && groupadd --system --gid 10001 taskmgr \
 && useradd --system --uid 10001 --gid taskmgr --home-dir /app --shell /usr/sbin/nologin taskmgr \
 && mkdir -p /app /data/uploads /var/lib/taskmgr/secrets \
 && chown taskmgr:taskmgr /app /data/uploads /var/lib/taskmgr/secrets \
 && chmod 700 /var/lib/taskmgr/secrets
WORKDIR /app
USER 10001:10001
EXPOSE 8084 9100
# No HEALTHCHECK here: the port depends on the process (PORT for the api,
# METRICS_PORT for the others), so docker-compose and Kubernetes probe
# /health/live and /health/ready per service.
CMD ["python", "-m", "services.api"]
