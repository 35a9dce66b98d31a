# The project's image: `fer-search` (the workers), `mlflow server` and optuna-dashboard all run
# from it, so the three agree on versions (constraints.txt) and the PostgreSQL driver is there.
#
#   docker build -t fer-search .            (docker-compose.yml builds it for you)
#   docker run --rm fer-search --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true

WORKDIR /app

# The package and its pinned dependencies (every install uses constraints.txt), with the
# dashboard extra for the `dashboard` service.
COPY pyproject.toml constraints.txt README.md ./
COPY trainer ./trainer
COPY search ./search
RUN pip install -c constraints.txt ".[dashboard]"

COPY studies ./studies

# Not root. The folders that compose mounts volumes on are made here, owned by that user, so a
# fresh named volume starts with the same owner.
RUN useradd --create-home --uid 1000 fer \
    && mkdir -p /app/data /app/.cache /mlartifacts \
    && chown fer:fer /app/data /app/.cache /mlartifacts
USER fer

ENTRYPOINT ["fer-search"]
CMD ["--help"]
