"""deploy/: the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate bundles them) and
against the backend they run (its real command line, ports, token variable, health service), the TLS
probe against a real TLS server, and the Dockerfiles' structure (no container builder runs in CI: each
COPY names what exists, the install step parses with install.py's own options, the command with the
CLI's own parser)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_MODEL

from image_enhancer.cli import build_parser
from image_enhancer.wire import TOKEN_ENV, parse_address

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.37"  # the newest whose schemas kubernetes-validate bundles
PROMISED_CPU_MEMORY = 2_500_000_000  # the 2.5 GB a CPU user is promised (README)
yaml = pytest.importorskip("yaml")


def documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in documents() if doc["kind"] == kind]


def backend(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def quantity(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def test_every_manifest_is_valid_against_the_kubernetes_schemas():
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("kubernetes-validate (a dev dependency) is not installed")
        pytest.skip("kubernetes-validate is not installed")
    kinds = set()
    for name, doc in documents():
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {error}")
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "Secret"} <= kinds


def test_the_service_is_headless_and_selects_every_backend():
    ((_, service),) = of_kind("Service")
    assert service["spec"]["clusterIP"] == "None"
    (port,) = service["spec"]["ports"]
    for name, deployment in of_kind("Deployment"):
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        container = backend(deployment)
        assert port["targetPort"] in {p["name"] for p in container["ports"]}, name
        assert port["port"] in {p["containerPort"] for p in container["ports"]}, name


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-cuda.yaml", "deployment-tls.yaml"])
def test_each_backend_runs_the_real_serve_command(name):
    deployment = next(doc for file, doc in of_kind("Deployment") if file == name)
    container = backend(deployment)
    args = build_parser().parse_args(container["args"])  # the CLI's own parser: a wrong flag fails here
    assert args.run.__name__ == "run_serve"
    port = parse_address(args.address).port
    assert port == container["ports"][0]["containerPort"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        settings = container[probe]
        if "grpc" in settings:  # the kubelet's gRPC probe asks grpc.health.v1 (plaintext only)
            assert settings["grpc"]["port"] == port and args.tls_cert is None, probe
        else:
            assert f"127.0.0.1:{port}" in settings["exec"]["command"][-1] and args.tls_cert, probe
    # A public address needs the token (or TLS): it comes from the Secret, under the variable serve reads.
    (token,) = [e for e in container["env"] if e["name"] == TOKEN_ENV]
    ((_, secret),) = of_kind("Secret")
    reference = token["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"] and reference["key"] in secret["stringData"]
    requests = container["resources"]["requests"]
    assert quantity(requests["memory"]) >= PROMISED_CPU_MEMORY
    assert quantity(container["resources"]["limits"]["memory"]) > quantity(requests["memory"])
    if args.tls_cert is not None:
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {str(args.tls_cert.parent), str(args.tls_key.parent)} <= mounts
    if "cuda" in name:
        assert args.device == "cuda" and container["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.fixture(scope="module")
def service_certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for the Service's DNS name, as the TLS Secret would hold."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    name = "image-enhancer.default.svc.cluster.local"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(folder / "tls.key"),
         "-out", str(folder / "tls.crt")],
        check=True, capture_output=True,
    )
    return folder / "tls.crt", folder / "tls.key"


def test_the_tls_probe_asks_a_real_tls_backend(make_enhancer, service_certificate):
    from image_enhancer.server.app import TlsFiles, serve

    deployment = next(doc for file, doc in of_kind("Deployment") if file == "deployment-tls.yaml")
    container = backend(deployment)
    command = container["readinessProbe"]["exec"]["command"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    cert, key = service_certificate
    running = serve(make_enhancer(), "127.0.0.1:0", tls=TlsFiles(cert.read_bytes(), key.read_bytes()),
                    warm_up=[FAST_MODEL])
    code = command[-1].replace("/etc/image-enhancer/tls/ca.crt", str(cert))
    code = code.replace("127.0.0.1:50051", running.address)

    def probe() -> int:
        return subprocess.run([sys.executable, *command[1:-1], code], env={**os.environ, **env},
                              capture_output=True, timeout=60).returncode

    try:
        assert running.wait_until_ready(120)
        assert probe() == 0
    finally:
        running.stop()
    assert probe() != 0


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments left out."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
            pending = ""
    return instructions


def install_options():
    spec = importlib.util.spec_from_file_location("project_install", REPO / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_the_dockerfiles_copy_what_exists_and_run_the_real_commands(name, model_store):
    import json

    instructions = dockerfile_instructions(DEPLOY / name)
    assert instructions[0][0] == "FROM"
    for word, rest in instructions:
        if word == "COPY":
            *sources, _destination = rest.split()
            assert all((REPO / source).exists() for source in sources), rest
    (install,) = [rest for word, rest in instructions if word == "RUN" and "install.py" in rest]
    argv = shlex.split(install.split("&&")[0])
    assert argv[:2] == ["python3", "install.py"]
    options = install_options()(argv[2:])  # install.py's own parser
    assert options.no_gimp and options.no_demo and options.no_dev
    assert set(options.models) <= {entry.name for entry in model_store.manifest.models}
    (entrypoint,) = [json.loads(rest) for word, rest in instructions if word == "ENTRYPOINT"]
    assert entrypoint == [f"{options.venv}/bin/image-enhancer"]
    (command,) = [json.loads(rest) for word, rest in instructions if word == "CMD"]
    args = build_parser().parse_args(command)
    assert args.run.__name__ == "run_serve"
    (exposed,) = [int(rest) for word, rest in instructions if word == "EXPOSE"]
    assert parse_address(args.address).port == exposed
    (user,) = [rest for word, rest in instructions if word == "USER"]
    assert user != "root"
