"""TLS inside the cluster (issue 29): MLflow, MinIO and PostgreSQL serve only TLS, every client verifies the
server's certificate, cert-manager issues every TLS secret for the names clients use."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from k8s.manifests import OVERLAYS, by_kind, env_of, one, platform_pods, pod_specs
from k8s.reachability import NAMESPACE, expected_reachability


TLS_SECRETS = {"mlflow": "mlflow-tls", "minio": "minio-tls", "postgres": "postgres-tls"}   # Service → its Secret
TLS_PORTS = {"mlflow": 5000, "minio": 9000, "postgres": 5432}
# (pod, container) → the servers it connects to; KubeRay's injected wait-gcs-ready copies a Ray container's env
TLS_CLIENTS = {
    ("afm-ray-head", "ray-head"): {"mlflow"},
    ("afm-ray-sim-worker", "ray-worker"): {"mlflow"},
    ("afm-ray-sim-worker", "wait-gcs-ready"): {"mlflow"},
    ("afm-ray-train-worker", "ray-worker"): {"mlflow"},
    ("afm-ray-train-worker", "wait-gcs-ready"): {"mlflow"},
    ("mlflow-bootstrap", "bootstrap-users"): {"mlflow"},
    ("mlflow", "auth-config"): {"postgres"},     # writes the URI into the auth ini that the server container reads
    ("mlflow", "mlflow"): {"postgres", "minio"},
    ("create-bucket", "create-bucket"): {"minio"},
}
# settings that would switch a client's verification off
INSECURE = re.compile(r"MLFLOW_TRACKING_INSECURE_TLS|MLFLOW_S3_IGNORE_TLS|PGSSLMODE|CURL_CA_BUNDLE|--insecure|"
                      r"sslmode=(?!verify-full)|PYTHONHTTPSVERIFY|REQUESTS_CA_BUNDLE", re.I)
CERT_MANAGER_FIELDS = {   # cert-manager.io/v1 (https://cert-manager.io/docs/reference/api-docs/): what k8s/ uses
    "Certificate": {"secretName", "commonName", "dnsNames", "duration", "renewBefore", "usages", "privateKey",
                    "issuerRef", "isCA"},
    "Issuer": {"selfSigned", "ca"},
}


def mounted_secret_file(template: dict, container: dict, path: str) -> tuple[str, str] | None:
    """(Secret, key) whose content ``container`` reads at ``path`` through a secret volume, else ``None``."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        secret = volumes.get(mount["name"], {}).get("secret")   # volumeClaimTemplates are no Secrets
        if not path.startswith(prefix) or secret is None:
            continue
        relative = path[len(prefix):]
        if "items" not in secret:
            return secret["secretName"], relative
        return next(((secret["secretName"], item["key"]) for item in secret["items"] if item["path"] == relative), None)
    return None


def secret_volume_mode(template: dict, container: dict, path: str) -> int:
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    return volumes[mount["name"]]["secret"].get("defaultMode", 0o644)


def probes_use_https(container: dict) -> bool:
    probes = [container[p] for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in container]
    return bool(probes) and all(p["httpGet"].get("scheme") == "HTTPS" for p in probes)


def server_pod(pods: dict, server: str) -> tuple[dict, dict]:
    template = pods[server]
    return template, template["spec"]["containers"][0]


@pytest.mark.parametrize("platform", OVERLAYS)
def test_mlflow_minio_and_postgres_serve_only_tls(rendered, platform):
    pods = platform_pods(rendered, platform)
    # MLflow: uvicorn with the certificate and key of mlflow-tls, nothing in clear text (probes over HTTPS)
    template, mlflow = server_pod(pods, "mlflow")
    options = [a.partition("=")[2] for a in mlflow["args"] if a.startswith("--uvicorn-opts=")]
    assert len(options) == 1, "mlflow server needs --uvicorn-opts with the TLS files"
    uvicorn = dict(a.removeprefix("--").partition("=")[::2] for a in shlex.split(options[0]))
    assert mounted_secret_file(template, mlflow, uvicorn["ssl-certfile"]) == ("mlflow-tls", "tls.crt")
    assert mounted_secret_file(template, mlflow, uvicorn["ssl-keyfile"]) == ("mlflow-tls", "tls.key")
    assert secret_volume_mode(template, mlflow, uvicorn["ssl-keyfile"]) & 0o007 == 0, "the key: not world-readable"
    assert template["spec"]["securityContext"]["fsGroup"] == template["spec"]["securityContext"]["runAsGroup"]
    assert not any(a.startswith(("--gunicorn-opts", "--waitress-opts", "--dev")) for a in mlflow["args"])
    assert probes_use_https(mlflow)
    # the Service and the probes name the container's port (a renamed port would leave them pointing nowhere)
    port_names = {p["name"] for p in mlflow["ports"]}
    assert {p["targetPort"] for p in one(rendered[platform], "Service", "mlflow")["spec"]["ports"]} <= port_names
    assert {mlflow[p]["httpGet"]["port"] for p in ("readinessProbe", "livenessProbe")} <= port_names
    # MinIO: public.crt/private.key in its --certs-dir make it serve HTTPS only
    template, minio = server_pod(pods, "minio")
    certs = minio["args"][minio["args"].index("--certs-dir") + 1]
    assert mounted_secret_file(template, minio, f"{certs}/public.crt") == ("minio-tls", "tls.crt")
    assert mounted_secret_file(template, minio, f"{certs}/private.key") == ("minio-tls", "tls.key")
    assert mounted_secret_file(template, minio, f"{certs}/CAs/ca.crt") == ("minio-tls", "ca.crt")
    assert secret_volume_mode(template, minio, f"{certs}/private.key") & 0o007 == 0
    assert probes_use_https(minio)
    # PostgreSQL: ssl=on with postgres-tls; a key owned by root must be 0640 or stricter
    template, postgres = server_pod(pods, "postgres")
    settings = dict(postgres["args"][i + 1].partition("=")[::2] for i, a in enumerate(postgres["args"]) if a == "-c")
    assert settings["ssl"] == "on" and settings["ssl_min_protocol_version"] in {"TLSv1.2", "TLSv1.3"}
    assert mounted_secret_file(template, postgres, settings["ssl_cert_file"]) == ("postgres-tls", "tls.crt")
    assert mounted_secret_file(template, postgres, settings["ssl_key_file"]) == ("postgres-tls", "tls.key")
    assert secret_volume_mode(template, postgres, settings["ssl_key_file"]) & 0o137 == 0
    assert template["spec"]["securityContext"]["fsGroup"] == template["spec"]["securityContext"]["runAsGroup"]
    # pg_hba.conf: TCP only with TLS (hostssl) and a password; no `host`/`hostnossl` line
    hba_path = settings["hba_file"]
    mount = next(m for m in postgres["volumeMounts"] if hba_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    hba = one(rendered[platform], "ConfigMap", volume["configMap"]["name"])["data"][hba_path.rpartition("/")[2]]
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert {rule[0] for rule in rules} == {"local", "hostssl"}
    assert all(rule[-1] == "scram-sha-256" for rule in rules if rule[0] == "hostssl")
    # a server's key reaches no other pod; clients mount only ca.crt of another server's Secret
    for name, template in pods.items():
        for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            for volume in template["spec"].get("volumes", []):
                secret = volume.get("secret", {})
                if secret.get("secretName") in TLS_SECRETS.values():
                    keys = {item["key"] for item in secret.get("items", [{"key": "*"}])}
                    owner = next(s for s, n in TLS_SECRETS.items() if n == secret["secretName"])
                    assert keys == {"ca.crt"} or name == owner, f"{name} mounts {secret['secretName']} keys {keys}"


def tls_connections(template: dict, container: dict) -> dict[str, tuple[str, str | None]]:
    """{server: (URL, the CA file the client verifies it against)} of a container's MLflow, MinIO and
    PostgreSQL addresses, from its env and argv."""
    env = {name: e.get("value", "") for name, e in env_of(container).items()}
    texts = list(env.values()) + container.get("command", []) + container.get("args", [])
    found: dict[str, tuple[str, str | None]] = {}
    for text in texts:
        for url in re.findall(r"(?:https?|postgresql\+psycopg2)://[^\s'\"]+", text):   # s3://BUCKET names no host
            host = re.sub(r"^.*@", "", url.split("://", 1)[1]).split("/")[0].split(":")[0].split("?")[0]
            if host not in TLS_SECRETS:
                continue
            if host == "mlflow":
                ca = env.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
            elif host == "minio":
                ca = env.get("AWS_CA_BUNDLE") if "MLFLOW_S3_ENDPOINT_URL" in env else env.get("SSL_CERT_FILE")
            else:
                query = dict(p.partition("=")[::2] for p in url.partition("?")[2].split("&") if p)
                assert query.get("sslmode") == "verify-full", f"{url}: PostgreSQL must be verified (sslmode=verify-full)"
                ca = query.get("sslrootcert")
            found[host] = (url, ca)
    return found


@pytest.mark.parametrize("platform", OVERLAYS)
def test_every_client_verifies_the_servers_certificate(rendered, platform):
    pods = platform_pods(rendered, platform)
    clients = {}
    for name, template in pods.items():
        spec = template["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{container['name']}"
            text = json.dumps({k: container.get(k) for k in ("env", "command", "args")})
            assert not INSECURE.search(text), f"{where}: TLS verification switched off: {INSECURE.search(text)[0]}"
            assert "http://" not in text, f"{where}: a plain-HTTP address"
            connections = tls_connections(template, container)
            if connections:
                clients[(name, container["name"])] = set(connections)
            # the URI the auth-config init container writes is used by the server container next to it
            reader = spec["containers"][0] if container["name"] == "auth-config" else container
            for server, (url, ca) in connections.items():
                assert url.startswith(("https://", "postgresql+psycopg2://")), f"{where}: {url} is not TLS"
                assert ca, f"{where}: no CA to verify {server} with"
                assert mounted_secret_file(template, reader, ca) == (TLS_SECRETS[server], "ca.crt"), \
                    f"{where}: {ca} is not the ca.crt of {TLS_SECRETS[server]}"
                if server != "postgres":
                    assert re.match(rf"https://([^@/]+@)?{server}:{TLS_PORTS[server]}$", url), url
    assert clients == TLS_CLIENTS
    # …and they are exactly the pods the NetworkPolicies let reach the three servers
    reaching = {(s, d) for (s, d), ports in expected_reachability().items() if d in TLS_SECRETS}
    assert reaching == {(pod, server) for (pod, _), servers in TLS_CLIENTS.items() for server in servers}
    # the MLflow client, psycopg2 and botocore read these settings (not names of our own)
    from mlflow.environment_variables import MLFLOW_TRACKING_SERVER_CERT_PATH

    assert MLFLOW_TRACKING_SERVER_CERT_PATH.name == "MLFLOW_TRACKING_SERVER_CERT_PATH"


def test_cert_manager_issues_every_tls_secret_for_the_names_clients_use(rendered):
    for platform in OVERLAYS:
        docs = rendered[platform]
        issuers = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Issuer")}
        certificates = {doc["spec"]["secretName"]: doc for doc in by_kind(docs, "Certificate")}
        for doc in by_kind(docs, "Issuer") + by_kind(docs, "Certificate"):
            assert doc["apiVersion"] == "cert-manager.io/v1" and doc["metadata"]["namespace"] == NAMESPACE
            unknown = set(doc["spec"]) - CERT_MANAGER_FIELDS[doc["kind"]]
            assert not unknown, f"{doc['kind']} {doc['metadata']['name']}: unknown fields {unknown}"
        for server, secret in TLS_SECRETS.items():
            certificate = certificates[secret]["spec"]
            assert {server, f"{server}.{NAMESPACE}.svc", f"{server}.{NAMESPACE}.svc.cluster.local"} <= \
                set(certificate["dnsNames"]), secret
            assert "server auth" in certificate["usages"] and not certificate.get("isCA")
            # signed by a CA Issuer whose key is an isCA Certificate issued by a self-signed Issuer
            issuer = issuers[certificate["issuerRef"]["name"]]
            assert certificate["issuerRef"]["kind"] == "Issuer"
            root = certificates[issuer["spec"]["ca"]["secretName"]]["spec"]
            assert root["isCA"] is True and "selfSigned" in issuers[root["issuerRef"]["name"]]["spec"]
            assert one(docs, "Service", server)["metadata"]["name"] == server
        # the CA's own Secret (with its key) is mounted by no pod
        ca_secrets = {issuer["spec"]["ca"]["secretName"] for issuer in issuers.values() if "ca" in issuer["spec"]}
        for doc in docs:
            for pod in pod_specs(doc):
                assert not {v.get("secret", {}).get("secretName") for v in pod.get("volumes", [])} & ca_secrets
    # without the component (the base) the same Secrets are expected from the user, and nothing makes them
    referenced = {v["secret"]["secretName"] for doc in rendered["base"] for pod in pod_specs(doc)
                  for v in pod.get("volumes", []) if "secret" in v}
    generated = {doc["metadata"]["name"] for doc in by_kind(rendered["base"], "Secret")}
    assert referenced - generated == set(TLS_SECRETS.values())
    assert not by_kind(rendered["base"], "Certificate")
