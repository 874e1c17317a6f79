# syntax=docker/dockerfile:1
# aemon container image: `docker build -t aemon:0.1.0 .`
# Runs as the unprivileged user aemon (10001) with a read-only root filesystem in mind: state
# in /var/lib/aemon (a volume), temporary files in /tmp (a tmpfs or emptyDir), config in
# /etc/aemon/aemon.toml (the example config by default; mount your own over /etc/aemon).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/aemon/.venv
WORKDIR /src
# Dependencies first, so a change of the code alone reuses this layer.
COPY pyproject.toml constraints.txt README.md LICENSE ./
# torch from PyTorch's CPU-only index (its 2.13.0+cpu satisfies the torch==2.13.0 pin and is
# preferred over PyPI's build, which pulls several GB of CUDA libraries); everything else
# from PyPI, pinned by constraints.txt.
RUN /opt/aemon/.venv/bin/pip install \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        -c constraints.txt "torch==2.13.0"
COPY service ./service
COPY simulators ./simulators
RUN /opt/aemon/.venv/bin/pip install \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        -c constraints.txt . \
    && /opt/aemon/.venv/bin/aemon --version

FROM python:3.11-slim
RUN groupadd --system --gid 10001 aemon \
    && useradd --system --uid 10001 --gid aemon --home-dir /var/lib/aemon \
        --no-create-home --shell /usr/sbin/nologin aemon \
    && install -d -o aemon -g aemon -m 0700 /var/lib/aemon \
    && install -d -m 0755 /etc/aemon
COPY --from=build /opt/aemon/.venv /opt/aemon/.venv
COPY deploy/aemon.example.toml /etc/aemon/aemon.toml
ENV PATH=/opt/aemon/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AEMON_STATE__DIR=/var/lib/aemon \
    AEMON_LOG__FORMAT=json
USER 10001:10001
WORKDIR /var/lib/aemon
EXPOSE 9108
VOLUME ["/var/lib/aemon"]
# For plain `docker run`; Kubernetes uses its own probes (deploy/kubernetes/statefulset.yaml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["aemon"]
CMD ["run", "--config", "/etc/aemon/aemon.toml"]
