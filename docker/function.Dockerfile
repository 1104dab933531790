# One image recipe for every sample function (testbed/functions/<FUNCTION>.py) as a Knative
# Service. Build from the repository root, e.g.:
#   docker build -f docker/function.Dockerfile --build-arg FUNCTION=buy -t ghcr.io/mec-testbed/fn-buy:0.1.0 .
# (`testbed lab up` builds one per Knative Service in k8s/knative/services.yaml.)
# Standard library only (no pip install); runs as an unprivileged user and writes only
# under /tmp (mount an emptyDir there when the root filesystem is read-only).
FROM python:3.11.13-slim-bookworm

ARG FUNCTION
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PORT=8080 \
    FN_STATE_DIR=/tmp/fn-state \
    FN_HANDLER=${FUNCTION}

WORKDIR /app
COPY testbed/__init__.py testbed/__init__.py
COPY testbed/functions/ testbed/functions/
RUN test -n "$FUNCTION" && test -f "testbed/functions/$FUNCTION.py"

# 65532: the conventional "nonroot" uid; the code is owned by root and read-only for it
RUN groupadd --system --gid 65532 fn \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin fn
USER 65532:65532

EXPOSE 8080
CMD ["python", "-m", "testbed.functions.serve"]
