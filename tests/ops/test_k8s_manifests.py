"""Structure of deploy/k8s: KServe InferenceService, workloads, config, secrets, ports.

No cluster here, so the manifests are checked against what relstream itself accepts: container
args parse with the real `relstream` CLI parser, the ConfigMap's relstream.yaml plus each
container's environment loads through the strict config loader and the packages' section
models, secrets are referenced only under names relstream reads, and ports agree with the
config defaults, docker-compose.yml and the Prometheus annotations.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "relstream"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


def load_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCS = load_docs()


def by_kind(kind):
    return [d for _, d in DOCS if d["kind"] == kind]


def one(kind, name=None):
    found = [d for d in by_kind(kind) if name is None or d["metadata"].get("name") == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workloads():
    return [d for _, d in DOCS if d["kind"] in WORKLOAD_KINDS]


def pod_spec(w):
    return w["spec"]["template"]["spec"]


def configmap_files():
    return one("ConfigMap", "relstream-config")["data"]


def test_every_document_has_identity_and_namespace():
    assert DOCS
    for fname, d in DOCS:
        assert isinstance(d.get("apiVersion"), str) and "/" in d["apiVersion"] or d["apiVersion"] == "v1", fname
        assert isinstance(d.get("kind"), str), fname
        meta = d.get("metadata", {})
        assert meta.get("name") or meta.get("generateName"), f"{fname}: {d['kind']} without a name"
        if d["kind"] != "Namespace":
            assert meta.get("namespace") == NAMESPACE, f"{fname}: {d['kind']} not in namespace {NAMESPACE}"
    assert one("Namespace")["metadata"]["name"] == NAMESPACE


def test_kustomization_lists_every_manifest_but_templates():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization lists missing {name}"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # the secret template must never be applied; jobs are created one step at a time
    assert files - listed == {"secret.example.yaml", "control-plane-job.yaml"}


def test_inference_service_for_triton_with_canary():
    isvc = one("InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    pred = isvc["spec"]["predictor"]
    pct = pred["canaryTrafficPercent"]
    assert isinstance(pct, int) and 0 <= pct <= 100
    model = pred["model"]
    assert model["modelFormat"]["name"] == "triton"
    assert re.fullmatch(r"\d{2}\.\d{2}-py3", model["runtimeVersion"])
    claim = re.fullmatch(r"pvc://([a-z0-9-]+)/.*", model["storageUri"]).group(1)
    assert claim in {p["metadata"]["name"] for p in by_kind("PersistentVolumeClaim")}
    args = model["args"]
    assert "--model-control-mode=explicit" in args  # `relstream model` loads per-version models
    metrics_port = next(a.split("=", 1)[1] for a in args if a.startswith("--metrics-port="))
    assert isvc["metadata"]["annotations"]["prometheus.kserve.io/port"] == metrics_port
    assert [p["name"] for p in model["ports"]] == ["h2c"]  # the scorers speak gRPC
    assert pred["minReplicas"] >= 1 and pred["maxReplicas"] >= pred["minReplicas"]


def test_workload_selectors_volumes_and_args_parse_with_the_cli():
    from relstream.cli import build_parser

    parser = build_parser()
    names = set()
    for w in workloads():
        spec = w["spec"]
        tmpl_labels = spec["template"]["metadata"].get("labels", {})
        if w["kind"] != "Job":
            assert spec["selector"]["matchLabels"].items() <= tmpl_labels.items(), w["metadata"]["name"]
        volumes = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
        for c in pod_spec(w)["containers"]:
            names.add(c["args"][0])
            assert c["image"], c["name"]
            args = parser.parse_args(c["args"])  # exits (SystemExit) on an unknown flag
            assert callable(args.func)
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{c['name']}: mount of undefined volume {m['name']}"
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] == "relstream-config"
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in {
                    p["metadata"]["name"] for p in by_kind("PersistentVolumeClaim")}
    assert {"ingest", "score", "serve", "model"} <= names


def _container(kind, name):
    return pod_spec(one(kind, name))["containers"][0]


def _env(container, secret_value="s3cret") -> dict[str, str]:
    """The container's environment as the pod would see it (secrets filled, $(VAR) expanded)."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = secret_value
        elif "fieldRef" in e.get("valueFrom", {}):
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[e["name"]] = "relstream-score-0"
    return env


def test_secrets_come_from_the_secret_under_names_relstream_reads():
    from relstream.config import KAFKA_SECRET_ENV, REDIS_PASSWORD_ENV
    from scorer.settings import ServeSettings

    secret = one("Secret", "relstream-secrets")
    assert all(v == "" for v in secret["stringData"].values()), "the template must not hold secrets"
    known = set(KAFKA_SECRET_ENV) | {REDIS_PASSWORD_ENV, ServeSettings().token_env}
    assert set(secret["stringData"]) <= known
    used = set()
    for w in workloads():
        for c in pod_spec(w)["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "relstream-secrets" and ref["key"] in secret["stringData"]
                    assert e["name"] == ref["key"] and e["name"] in known
                    used.add(ref["key"])
                assert not re.search(r"PASSWORD|TOKEN|SECRET", e["name"]) or "valueFrom" in e, \
                    f"{c['name']}: {e['name']} given as a literal value"
    assert used == set(secret["stringData"]), "every key of the Secret is used by some container"
    assert "RELSTREAM_API_TOKEN" in _env(_container("Deployment", "relstream-serve"))
    cm = yaml.safe_load(configmap_files()["relstream.yaml"])
    assert "password" not in cm.get("redis", {}) and not any(
        "password" in k or "secret" in k for k in cm.get("kafka", {}).get("client", {}))


@pytest.mark.parametrize("kind, name", [("Deployment", "relstream-ingest"), ("StatefulSet", "relstream-score"),
                                        ("Deployment", "relstream-serve"), ("Job", None)])
def test_config_loads_strictly_in_each_container(tmp_path, kind, name):
    from relstream.config import load_config, section
    from schemas.plan_loading import builtin_plan, load_plan
    from scorer.settings import ScoreSettings, ServeSettings
    from streams.ingest import IngestSection

    c = _container(kind, name)
    env = _env(c)
    mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config")
    assert env["RELSTREAM_CONFIG"] == f"{mount}/relstream.yaml"
    files = configmap_files()
    (tmp_path / "relstream.yaml").write_text(files["relstream.yaml"])
    (tmp_path / "plan.yaml").write_text(files["plan.yaml"])
    cfg = load_config(tmp_path / "relstream.yaml", env=env, use_local_stack=False)
    section(cfg, "ingest", IngestSection)
    score = section(cfg, "score", ScoreSettings)
    serve = section(cfg, "serve", ServeSettings)
    assert str(cfg.plan) == f"{mount}/plan.yaml"
    assert load_plan(tmp_path / "plan.yaml").fingerprint() == builtin_plan("fraud").fingerprint()
    assert cfg.triton.protocol == "grpc"
    assert str(cfg.model_repository) == "/models"
    if name == "relstream-score":
        assert score.transactional_id == "relstream-score-0"  # one stable id per pod
        assert one("StatefulSet", name)["spec"]["serviceName"]
    if name == "relstream-serve":
        assert serve.host == "0.0.0.0"
    if c["args"][0] in ("score", "serve", "model"):  # they read routing.json from the volume
        assert any(m["mountPath"] == str(cfg.model_repository) for m in c["volumeMounts"])


def _compose_ports(service: str) -> set[int]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {int(p.split(":")[-1]) for p in compose["services"][service].get("ports", [])}


def _prom_targets() -> dict[str, int]:
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    out = {}
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                host, _, port = t.rpartition(":")
                out[host] = int(port)
    return out


def test_ports_agree_with_config_defaults_compose_and_prometheus():
    from scorer.settings import ServeSettings

    cm = yaml.safe_load(configmap_files()["relstream.yaml"])
    targets = _prom_targets()

    serve = one("Deployment", "relstream-serve")
    c = pod_spec(serve)["containers"][0]
    port = c["ports"][0]["containerPort"]
    assert port == ServeSettings().port == cm["serve"]["port"] == targets["serve"]
    assert port in _compose_ports("serve")
    svc = one("Service", "relstream-serve")
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    assert svc["spec"]["selector"].items() <= serve["spec"]["template"]["metadata"]["labels"].items()
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == c["ports"][0]["name"]
    source = (ROOT / "scorer" / "http.py").read_text()
    assert f'"{c["readinessProbe"]["httpGet"]["path"]}"' in source
    assert f'"{c["livenessProbe"]["httpGet"]["path"]}"' in source

    ingest = one("Deployment", "relstream-ingest")
    port = pod_spec(ingest)["containers"][0]["ports"][0]["containerPort"]
    assert port == cm["ingest"]["metrics_port"] == targets["ingest"]
    assert port in _compose_ports("ingest")

    score = one("StatefulSet", "relstream-score")
    c = pod_spec(score)["containers"][0]
    port = c["ports"][0]["containerPort"]
    assert c["args"][c["args"].index("--metrics-port") + 1] == str(port)
    assert port == targets["score"] and port in _compose_ports("score")

    for w in (ingest, score):  # their /metrics listen on RELSTREAM_METRICS_HOST (default loopback)
        assert _env(pod_spec(w)["containers"][0])["RELSTREAM_METRICS_HOST"] == "0.0.0.0"
    for w in (serve, ingest, score):
        ann = w["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert int(ann["prometheus.io/port"]) == pod_spec(w)["containers"][0]["ports"][0]["containerPort"]
