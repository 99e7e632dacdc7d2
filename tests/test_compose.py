"""docker-compose.yml against the Compose specification, and the stack's promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from digest.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CHECK = Path(sys.executable).parent / "check-jsonschema"
DIGEST_SERVICES = ("migrate", "web", "worker", "beat", "monitor", "flower")


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
    assert [name for name in services if "build" in services[name]] == ["migrate"]
    assert services["migrate"]["build"]["context"] == "."
    # The others run it by name; none looks for it in a registry.
    assert all(services[name]["pull_policy"] == "never" for name in DIGEST_SERVICES)


def test_the_image_is_built_in_two_stages_as_an_ordinary_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM\s", dockerfile, re.M)) == 2
    # The runtime stage takes the built environment only: no source tree, build/ or egg-info.
    runtime = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=build /opt/digest /opt/digest" in runtime
    assert "COPY digest" not in runtime and "pip install" not in runtime
    assert "ln -s /opt/digest/bin/digest /usr/local/bin/digest" in runtime
    useradd = re.search(r"useradd[^\n]*(\\\n[^\n]*)*", runtime)
    assert useradd and "--no-log-init" in useradd.group(0) and "--system" not in useradd.group(0)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users and users[-1] not in ("root", "0")


def test_data_services_are_healthchecked_and_redis_never_evicts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # Over TCP: the image's first-start set-up runs on a server with no TCP listener.
    assert "pg_isready -h 127.0.0.1" in " ".join(services["postgres"]["healthcheck"]["test"])
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
    assert services["worker"]["environment"]["DIGEST_REDIS_URL"].endswith(":-redis://redis:6379/0}")


def test_the_worker_is_healthy_soon_after_it_starts(compose: dict[str, Any]) -> None:
    check = compose["services"]["worker"]["healthcheck"]
    seconds = {k: int(check[k].rstrip("s")) for k in ("interval", "start_period")}
    assert seconds["interval"] <= 15 and seconds["start_period"] >= 30


def test_the_monitor_runs_the_check_and_is_healthy_only_when_it_passes(
    compose: dict[str, Any],
) -> None:
    monitor = compose["services"]["monitor"]
    assert monitor["command"] == ["digest", "status", "--check", "--alert", "--every", "60"]
    assert monitor["healthcheck"]["test"] == ["CMD", "digest", "status", "--check"]
    assert monitor["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_flower_has_basic_auth_and_persistent_state(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert "--persistent=True" in flower["command"]
    db = next(arg for arg in flower["command"] if arg.startswith("--db="))
    assert any(v.endswith(":/data") for v in flower["volumes"]) and db.startswith("--db=/data/")
    assert flower["environment"]["DIGEST_REDIS_URL"].endswith(":-redis://redis:6379/0}")


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


def example_lines() -> dict[str, str]:
    """NAME -> value of every `NAME=value` and `# NAME=value` line of .env.example."""
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))


def test_every_setting_digest_reads_is_in_env_example() -> None:
    read = set(re.findall(r'"(DIGEST_[A-Z0-9_]+)"', (ROOT / "digest/config.py").read_text()))
    documented = set(re.findall(r"`(DIGEST_[A-Z0-9_]+)`", (ROOT / "README.md").read_text()))
    documented -= {"DIGEST_TEST_DATABASE_URL", "DIGEST_TEST_REDIS_URL", "DIGEST_NOW"}
    example = (ROOT / ".env.example").read_text()
    assert read and not {name for name in read | documented if name not in example}


def test_the_defaults_in_env_example_are_the_real_ones() -> None:
    """Uncommenting any `# DIGEST_X=default` line of .env.example changes nothing."""
    stack = dict(re.findall(r"\$\{(DIGEST_\w+):-([^}]*)\}", COMPOSE.read_text()))
    image = {"DIGEST_DATA_DIR": "/data", "DIGEST_TEMPLATES_DIR": "/app/templates"}
    base = {**image, "DIGEST_SECRET_KEY": "k"}
    defaults = load_settings(base)
    commented = re.findall(r"^# (DIGEST_\w+)=(.*)$", (ROOT / ".env.example").read_text(), re.M)
    assert len(commented) > 30
    for name, value in commented:
        if name in stack:  # the stack's own default, set in docker-compose.yml
            assert value == stack[name], name
        else:
            assert load_settings({**base, name: value}) == defaults, f"{name}={value}"


def test_every_digest_service_reads_env_and_gets_the_database_in_parts(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in DIGEST_SERVICES:
        service = services[name]
        assert service["env_file"] == [{"path": ".env", "required": False}], name
        env = service["environment"]
        assert "DIGEST_DATABASE_URL" not in env, name
        assert env["DIGEST_DATABASE_HOST"] == "postgres", name
        assert env["DIGEST_DATABASE_PASSWORD"].startswith("${POSTGRES_PASSWORD:?"), name


def test_feed_files_live_in_a_mounted_folder(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["worker"]["volumes"]
    assert "./feeds:/feeds:ro" in volumes and "worker-data:/data" in volumes
    assert "feeds" in (ROOT / ".dockerignore").read_text().split()
