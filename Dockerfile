# detox production image: Debian bookworm-slim, non-root user "detox", package in the /opt/detox venv.
#
#   docker build -t detox .            (or: podman build --format docker -t detox .; see scripts/podman-check.sh)
#   docker run -p 2525:2525 -v detox-state:/var/lib/detox detox
#   antivirus: docker run -d --name detox-clamd --user root -v clamav-db:/var/lib/clamav \
#                  -v clamd-socket:/run/clamav --entrypoint detox-clamd detox      (then detox with -v clamd-socket:/run/clamav and
#              antivirus.clamd = "unix:/run/clamav/clamd.ctl", as /etc/detox/detox.production.toml has)
#
# Build args: BASE_IMAGE (default debian:bookworm-slim), PIP_INDEX_URL / PIP_EXTRA_INDEX_URL /
# PIP_TRUSTED_HOST (a package index other than PyPI). A CA bundle for a TLS-intercepting proxy can be given
# as the build secret "pip_cert" (--secret id=pip_cert,src=FILE): it is used by pip only, never stored.
# HEALTHCHECK needs the Docker image format (podman/buildah: --format docker).

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/detox
WORKDIR /src

# Dependencies first (their own layer: code changes don't re-download them), pinned by constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && /opt/detox/bin/pip install -c constraints.txt -r /tmp/requirements.txt

# Then the package itself (.dockerignore keeps tests, venvs and state out of the context).
COPY . .
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    /opt/detox/bin/pip install -c constraints.txt . \
    && /opt/detox/bin/python -m compileall -q -x 'olefile/olefile2\.py' /opt/detox/lib  # Python 2 leftover in olefile

# -------------------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 \
        libmagic1 \
        bubblewrap \
        ca-certificates \
        librsvg2-bin \
        fonts-ipaexfont \
        # legacy Office and RTF attachments → PDF (headless LibreOffice in the sandbox, driven over uno)
        libreoffice-core-nogui \
        libreoffice-writer-nogui \
        libreoffice-calc-nogui \
        libreoffice-impress-nogui \
        python3-uno \
        # [antivirus]: clamd and freshclam (signatures fetched at run time, never baked in; run
        # clamd as its own container from this image: `--entrypoint detox-clamd`, see README)
        clamav-daemon \
        clamav-freshclam \
    # ---- keep this list in step with scripts/install-system-deps.sh.
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system detox \
    && useradd --system --gid detox --home-dir /var/lib/detox --shell /usr/sbin/nologin detox \
    && install -d -o detox -g detox -m 0750 /var/lib/detox \
    && install -d -m 0755 /etc/detox

COPY --from=build /opt/detox /opt/detox
COPY config/detox.toml /etc/detox/detox.toml
COPY config/detox.production.toml /etc/detox/detox.production.toml
COPY config/clamd.conf /etc/clamav/clamd.conf
COPY scripts/detox-clamd /usr/local/bin/detox-clamd
ENV PATH=/opt/detox/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DETOX_CONFIG=/etc/detox/detox.toml

# Fail the build now if the shipped config doesn't load with the installed package.
# The file only: bubblewrap needs user namespaces the build container may not have. Run
# `detox check-config` in the running container to try the sandbox too.
RUN detox check-config --no-sandbox /etc/detox/detox.toml \
    && detox check-config --no-sandbox /etc/detox/detox.production.toml

USER detox
WORKDIR /var/lib/detox
VOLUME /var/lib/detox
EXPOSE 2525

# Healthy when the SMTP listener answers with a 220 banner (python only, no extra packages).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import socket,sys; s=socket.create_connection(('127.0.0.1',2525),4); s.settimeout(4); ok=s.recv(512).startswith(b'220'); s.sendall(b'QUIT\\r\\n'); s.close(); sys.exit(0 if ok else 1)"]

ENTRYPOINT ["detox"]
CMD ["serve", "--config", "/etc/detox/detox.toml", "--listen", "0.0.0.0:2525"]
