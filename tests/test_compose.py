"""docker-compose.yml against the Compose specification, and the stack's promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CHECK = Path(sys.executable).parent / "check-jsonschema"
DIGEST_SERVICES = ("migrate", "web", "worker", "beat", "flower")


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    if not CHECK.exists():
        pytest.skip("check-jsonschema is not installed")
    return subprocess.run(
        [str(CHECK), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(YAML(typ="safe").load(COMPOSE.read_text()))


def test_compose_file_passes_the_compose_spec_schema() -> None:
    result = validate(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_mistakes(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("service_completed_successfully", "done", 1))
    assert validate(broken).returncode != 0


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "redis", "mailpit", *DIGEST_SERVICES}


def test_one_image_built_once_for_all_digest_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {services[name]["image"] for name in DIGEST_SERVICES} == {"digest:local"}
    assert all(services[name]["build"]["context"] == "." for name in DIGEST_SERVICES)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users and users[-1] not in ("root", "0")


def test_data_services_are_healthchecked_and_redis_never_evicts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_everything_waits_for_the_one_shot_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["digest", "init"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_exactly_one_beat_and_the_worker_and_beat_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["beat"]["command"][:3] == ["celery", "--app=workers.app", "beat"]
    assert services["worker"]["command"][:3] == ["celery", "--app=workers.app", "worker"]
    assert services["worker"]["environment"]["DIGEST_REDIS_URL"] == "redis://redis:6379/0"


def test_flower_has_basic_auth_and_persistent_state(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert "--persistent=True" in flower["command"]
    db = next(arg for arg in flower["command"] if arg.startswith("--db="))
    assert any(v.endswith(":/data") for v in flower["volumes"]) and db.startswith("--db=/data/")
    assert flower["environment"]["DIGEST_REDIS_URL"] == "redis://redis:6379/0"


def test_web_serves_the_app_factory_with_a_healthcheck(compose: dict[str, Any]) -> None:
    web = compose["services"]["web"]
    assert web["command"][0] == "gunicorn" and "digest.web:create_app()" in web["command"]
    # digest.gunicorn_conf binds 0.0.0.0:8000 and keeps tokens out of the access log.
    assert "--config=python:digest.gunicorn_conf" in web["command"] and "8000:8000" in web["ports"]
    assert "/healthz" in " ".join(web["healthcheck"]["test"])


def test_mailpit_has_smtp_and_web_ports(compose: dict[str, Any]) -> None:
    ports = " ".join(compose["services"]["mailpit"]["ports"])
    assert ":1025:1025" in ports and ":8025:8025" in ports


def test_env_example_names_every_required_variable() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^(\w+)=", example, re.M))
    assert required and required <= defined
    assert "DIGEST_SECRET_KEY=\n" in example  # shipped empty: each site makes its own


def test_secrets_stay_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git", "var"} <= set(ignored)
