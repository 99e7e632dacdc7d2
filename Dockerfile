# One image for every digest service: migrate, web, worker, beat and flower differ only
# in their command (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns nothing but /data: the code is root-owned and read-only to it.
RUN groupadd --system --gid 10001 digest \
 && useradd --system --uid 10001 --gid digest --home-dir /data --shell /usr/sbin/nologin digest \
 && mkdir -p /data \
 && chown digest:digest /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY digest ./digest
COPY workers ./workers
COPY templates ./templates
RUN pip install ".[postgres,ops]"

# Installed as a package, digest cannot find the templates next to its source.
ENV DIGEST_DATA_DIR=/data \
    DIGEST_TEMPLATES_DIR=/app/templates

USER digest
EXPOSE 8000 5555
CMD ["gunicorn", "--config", "python:digest.gunicorn_conf", "digest.web:create_app()"]
