# syntax=docker/dockerfile:1
# The tap: `upf-tap live` in the UPF's network namespace (compose/docker-compose.tap.yaml).
# Runs as a non-root user; the only privilege is CAP_NET_RAW (AF_PACKET), held as a file
# capability on the interpreter, so the container needs `cap_add: [NET_RAW]` (after
# `cap_drop: [ALL]`) and must not set no-new-privileges (that would void file capabilities).
# /var/lib/upf-tap/spool: the spool's directory (a named volume in compose: it starts as a copy
# of this directory, ownership included, so the read-only container can write there).
# Build from the repository root: docker build -f docker/tap.Dockerfile .
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# iproute2: the entrypoint finds the N3/N4 interfaces by subnet; libcap2-bin: setcap (removed after)
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 libcap2-bin \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN pip install . \
    && install -m 0755 docker/tap-entrypoint.sh /usr/local/bin/tap-entrypoint \
    && cd / && rm -rf /src

RUN setcap cap_net_raw+ep "$(readlink -f /usr/local/bin/python3)" \
    && apt-get purge -y libcap2-bin && apt-get autoremove -y \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin tap \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/upf-tap/spool

USER 10001:10001
WORKDIR /
ENTRYPOINT ["/usr/local/bin/tap-entrypoint"]
CMD ["--help"]
