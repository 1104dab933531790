# syntax=docker/dockerfile:1
# The detector (`detector serve`): ingest AppEvents, deliver CloudEvents to K_SINK.
# Non-root, no capabilities; the outbox lives on the volume at /var/lib/detector.
# Build from the repository root: docker build -f docker/detector.Dockerfile .
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
RUN pip install . \
    && cd / && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin detector \
    && install -d -o 10001 -g 10001 /var/lib/detector

USER 10001:10001
WORKDIR /var/lib/detector
EXPOSE 8080
ENTRYPOINT ["detector"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--outbox", "/var/lib/detector/outbox.db"]
