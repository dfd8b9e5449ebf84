# The Click-Pose Label Studio ML backend. Plain Dockerfile syntax: the classic builder builds it
# (no BuildKit or buildx needed). README, "Deployment", has every command; in short:
#   docker build -t clickpose-backend .                                 CPU, torch from TORCH_INDEX
#   docker build --build-arg WHEELS_DIR=wheels -t clickpose-backend .   air-gapped: wheels/ holds
#       the wheels (scripts/docker_wheels.sh wheels); no index is used for what is in it
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                --build-arg CLICKPOSE_DEVICE=cuda -t clickpose-backend:cuda .
#   --build-arg CLICKPOSE_WEIGHTS_FILE=ClickPose_interactive_R50.pth bakes weights/<that file> in.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS python
# Bases without Python (CUDA images) get their distribution's; python:*-slim and Debian have it.
RUN if ! python3 -c "import ensurepip" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; fi

# The venv is built in its own stage: the wheels folder never reaches a layer of the image.
FROM python AS venv
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG WHEELS_DIR=
WORKDIR /src
RUN python3 -m venv /opt/venv
# Without WHEELS_DIR only constraints.txt lands there (the classic builder reads an empty source
# as the whole context).
COPY constraints.txt ${WHEELS_DIR:-constraints.txt} /tmp/wheels/
COPY constraints.txt pyproject.toml README.md ./
COPY docker/install_python.sh /usr/local/bin/
RUN install_python.sh torch
COPY clickpose_core ./clickpose_core
COPY backend ./backend
RUN install_python.sh project
# Weights are gathered here so that one chmod (a copy of every file in this stage's layers only)
# makes them readable for the non-root user even when the baked file was mode 0600.
ARG CLICKPOSE_WEIGHTS_FILE=
COPY weights/README.md weights/MODEL_CARD.md weights/clickpose_demo_synthetic.pth /weights/
COPY weights/README.md weights/${CLICKPOSE_WEIGHTS_FILE:-README.md} /weights/
RUN chmod -R a+rX /weights

FROM python
ARG CLICKPOSE_DEVICE=cpu
ARG CLICKPOSE_WEIGHTS_FILE=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH XDG_CACHE_HOME=/tmp/cache \
    HOST=0.0.0.0 PORT=9090 WORKERS=1 THREADS=4 LOG_LEVEL=INFO CLICKPOSE_DEVICE=${CLICKPOSE_DEVICE}
COPY --from=venv /opt/venv /opt/venv
WORKDIR /app
COPY _wsgi.py ./
COPY --from=venv /weights ./weights
# Empty (the default): the official file if one is mounted at /app/weights/, else the demo weights.
ENV CLICKPOSE_WEIGHTS=${CLICKPOSE_WEIGHTS_FILE:+/app/weights/}${CLICKPOSE_WEIGHTS_FILE}

RUN useradd --no-create-home --home-dir /tmp --uid 10001 --user-group clickpose
USER 10001:10001

EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['PORT'], timeout=4)"]
# _wsgi.py execs gunicorn --preload (weights loaded once, before the workers fork) on $HOST:$PORT.
CMD ["python", "_wsgi.py"]
