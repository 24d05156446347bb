# syntax=docker/dockerfile:1
# One image for both services; the command chooses which one runs:
#   docker run IMAGE                      -> imgpipe-ingest (the default)
#   docker run IMAGE imgpipe-processor    -> the processor
#   docker run IMAGE imgpipe status ID    -> the CLI
# deploy/k8s sets `command:` per Deployment. Build: `docker build -t imgpipe:dev .`
#
# The base is pinned by version. To pin it by digest as well, resolve the tag where images
# can be pulled (`docker buildx imagetools inspect python:3.11.14-slim-bookworm`) and
# append `@sha256:...` to both FROM lines; the digest is left out here because it could
# not be checked from where this file was written.

# ---- build: a virtualenv with imgpipe and its dependencies -----------------------------
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Every dependency ships manylinux wheels (grpcio, asyncpg, Pillow, aiohttp); imgpipe's
# own C extension (imgpipe.processor._jpeg, the DCT-domain requantiser) needs gcc and
# libjpeg-turbo's headers. The generated stubs are committed under src/imgpipe/v1, so
# `pip install .` needs no protoc. The distribution's packages move with its point
# releases, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev libjpeg62-turbo-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/imgpipe
WORKDIR /src
# The runtime dependencies exactly as locked (versions and hashes, `make lock`), then
# imgpipe itself without resolving anything again.
COPY requirements.lock ./
RUN /opt/imgpipe/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
COPY services ./services
COPY shared ./shared
RUN /opt/imgpipe/bin/pip install --no-deps . \
    && /opt/imgpipe/bin/pip check \
    && /opt/imgpipe/bin/pip uninstall --yes pip setuptools wheel

# ---- runtime: the virtualenv on a clean base, no pip, no build tools, not root ------------
FROM python:3.11.14-slim-bookworm AS runtime

# The base's own pip and setuptools are not needed to run; take them out.
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
    && groupadd --gid 10001 imgpipe \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin imgpipe

COPY --from=build /opt/imgpipe /opt/imgpipe
# libjpeg-turbo's runtime library (libjpeg62-turbo) for the C extension, from the build
# stage: no package manager runs here.
COPY --from=build /usr/lib/*-linux-gnu/libjpeg.so.62* /usr/local/lib/
RUN ldconfig

# Bytecode is compiled at install time; the root filesystem is read-only in Kubernetes.
ENV PATH=/opt/imgpipe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp

# ingest: gRPC 50051, HTTP 8080; processor: gRPC 50052, HTTP 8081.
EXPOSE 50051 8080 50052 8081

# Python is PID 1 and handles SIGTERM itself (graceful drain); it starts no children.
CMD ["imgpipe-ingest"]
