# One image for every digest service: migrate, web, worker, beat and flower differ only
# in their command (see docker-compose.yml).

# Stage 1 installs digest and everything it needs into a virtual environment without
# pip; only that environment reaches the image that runs, not the source tree, build/,
# *.egg-info or pip's cache. (Plain multi-stage: no BuildKit-only syntax.)
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv --without-pip /opt/digest
WORKDIR /src
COPY pyproject.toml README.md ./
COPY digest ./digest
COPY workers ./workers
RUN pip --python /opt/digest/bin/python install ".[postgres,ops]"


# Stage 2: the runtime.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns nothing but /data: the code is root-owned and read-only to it.
# uid 10001 stays fixed so volumes made by an older image keep their owner; it is an
# ordinary uid (not --system, whose range ends at 999), and --no-log-init keeps the
# lastlog/faillog files from growing to the size of such a uid.
RUN groupadd --gid 10001 digest \
 && useradd --no-log-init --no-create-home --uid 10001 --gid digest \
        --home-dir /data --shell /usr/sbin/nologin digest \
 && mkdir -p /data /feeds \
 && chown digest:digest /data

COPY --from=build /opt/digest /opt/digest
COPY templates /app/templates
# digest, celery and gunicorn on PATH; the CLI also at a fixed path for mail aliases.
ENV PATH=/opt/digest/bin:$PATH
RUN ln -s /opt/digest/bin/digest /usr/local/bin/digest

# Installed as a package, digest cannot find the templates next to its source.
ENV DIGEST_DATA_DIR=/data \
    DIGEST_TEMPLATES_DIR=/app/templates

WORKDIR /data
USER digest
EXPOSE 8000 5555
CMD ["gunicorn", "--config", "python:digest.gunicorn_conf", "digest.web:create_app()"]
