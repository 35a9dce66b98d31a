# The project's image: `fer-search` (the workers), the MLflow tracking server (with its login,
# basic-auth) and optuna-dashboard all run from it, so the three agree on versions
# (constraints.txt) and the PostgreSQL driver is there.
#
#   docker build -t fer-search .            (docker-compose.yml builds it for you)
#   docker run --rm fer-search --help
#
# The base image is pinned by its patch release. Pin it by digest too where you build
# (`docker buildx imagetools inspect python:3.11.13-slim-bookworm` prints it; then
# `FROM python:3.11.13-slim-bookworm@sha256:...`): no registry could be reached where this file
# was written, so no digest is given here (deploy/README.md, "Pinned images").
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app

# The package and its pinned dependencies (every install uses constraints.txt), with the
# dashboard extra for the `dashboard` service and MLflow's `auth` extra (Flask-WTF) for the
# tracking server's login.
COPY pyproject.toml constraints.txt README.md ./
COPY trainer ./trainer
COPY search ./search
RUN pip install -c constraints.txt ".[dashboard]" "mlflow[auth]"

COPY studies ./studies
# Secrets arrive as files; this turns them into what each program reads (deploy/docker/).
COPY --chmod=755 deploy/docker/fer-search-secrets.sh /usr/local/bin/fer-search-secrets
COPY --chmod=755 deploy/mlflow/fer-mlflow-server.py /usr/local/bin/fer-mlflow-server

# Not root: a numeric user, so that Kubernetes' runAsNonRoot can check it. The folders that
# compose mounts volumes on are made here, owned by that user, so a fresh named volume starts
# with the same owner. Everything else may be read-only (/tmp is a tmpfs or an emptyDir).
RUN useradd --create-home --uid 1000 fer \
    && mkdir -p /app/data /app/.cache /mlartifacts /home/fer/.keras \
    && chown fer:fer /app/data /app/.cache /mlartifacts /home/fer/.keras
USER 1000:1000

# The services say how they are checked (compose healthcheck, Kubernetes probes): the image
# runs several programs, none of them always.
HEALTHCHECK NONE

ENTRYPOINT ["fer-search-secrets", "fer-search"]
CMD ["--help"]
