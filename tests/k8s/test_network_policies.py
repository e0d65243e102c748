"""The NetworkPolicies allow exactly the promised connections (tests/k8s/reachability.py evaluates them)."""

from __future__ import annotations

import copy

import pytest
import yaml

from k8s.manifests import K8S, OVERLAYS, PAIRS, by_kind, one, platform_pods, ray_container
from k8s.reachability import (ALL_PORTS, Endpoint, INTERNET, NAMESPACE, OPERATORS, RAY_PORTS, allowed,
                              expected_reachability, normalize, policy_types)


# pods that are not ours: cluster DNS, a labelled-nothing pod in afm-ray (e.g. `kubectl run`),
# a pod of another namespace, and the internet
OTHER_PODS = {
    "kube-dns": ("kube-system", {"k8s-app": "kube-dns"}),
    "stranger": (NAMESPACE, {"run": "stranger"}),
    "other-namespace": ("default", {"app.kubernetes.io/component": "ray-node", "app.kubernetes.io/name": "mlflow-bootstrap"}),
    # the KubeRay operator pod as KubeRay's Helm chart labels it (helm-chart/kuberay-operator/templates/
    # deployment.yaml) and as its kustomize install does (ray-operator/config/manager/manager.yaml), in the
    # namespace the overlays name; the same labels elsewhere, and other pods of that namespace, are strangers
    "kuberay-operator-helm": ("ray-system", {"app.kubernetes.io/name": "kuberay-operator",
                                             "app.kubernetes.io/instance": "kuberay-operator",
                                             "app.kubernetes.io/component": "kuberay-operator"}),
    "kuberay-operator-kustomize": ("ray-system", {"app.kubernetes.io/name": "kuberay",
                                                  "app.kubernetes.io/component": "kuberay-operator"}),
    "operator-elsewhere": ("default", {"app.kubernetes.io/component": "kuberay-operator"}),
    "ray-system-stranger": ("ray-system", {"run": "stranger"}),
}


def intersect(a, b) -> list[tuple[int, int]]:
    return normalize([(max(x[0], y[0]), min(x[1], y[1])) for x in a for y in b if max(x[0], y[0]) <= min(x[1], y[1])])


def reachability(policies: list[dict], endpoints: list[Endpoint], namespaces: dict[str, dict]) -> dict:
    """{(source, destination): {protocol: port intervals}} for every pair with something open,
    leaving out pairs that are both outside afm-ray (not ours to police)."""
    table = {}
    for source in endpoints:
        for destination in endpoints:
            if destination.name == INTERNET or NAMESPACE not in (source.namespace, destination.namespace):
                if destination.name != INTERNET or source.namespace != NAMESPACE:
                    continue
            egress = allowed("egress", source, destination, destination, policies, namespaces)
            ingress = allowed("ingress", destination, source, destination, policies, namespaces)
            ports = {protocol: intersect(egress.get(protocol, []), ingress.get(protocol, []))
                     for protocol in ("TCP", "UDP")}
            ports = {protocol: intervals for protocol, intervals in ports.items() if intervals}
            if ports:
                table[(source.name, destination.name)] = ports
    return table


def network(rendered: dict, platform: str, policies: list[dict] | None = None):
    docs = rendered[platform] + rendered[dict(PAIRS)[platform]]
    pods = platform_pods(rendered, platform)
    namespace = one(rendered[platform], "Namespace")
    namespaces = {NAMESPACE: {"kubernetes.io/metadata.name": NAMESPACE, **namespace["metadata"].get("labels", {})},
                  "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
                  "default": {"kubernetes.io/metadata.name": "default"},
                  "ray-system": {"kubernetes.io/metadata.name": "ray-system"}}
    endpoints = [Endpoint(name, NAMESPACE, t["metadata"]["labels"], t) for name, t in pods.items()]
    endpoints += [Endpoint(name, ns, labels) for name, (ns, labels) in OTHER_PODS.items()]
    endpoints.append(Endpoint(INTERNET, None, {}))
    return by_kind(docs, "NetworkPolicy") if policies is None else policies, endpoints, namespaces


@pytest.mark.parametrize("platform", OVERLAYS)
def test_network_policies_allow_exactly_the_promised_connections(rendered, platform):
    policies, endpoints, namespaces = network(rendered, platform)
    table = reachability(policies, endpoints, namespaces)
    expected = expected_reachability()
    missing = {k: v for k, v in expected.items() if table.get(k) != v}
    extra = {k: v for k, v in table.items() if k not in expected}
    assert not missing and not extra, f"missing or different: {missing}\nnot promised: {extra}"
    # the negative cases spelled out
    assert ("prepare-data", "mlflow") not in table and not [k for k in table if "prepare-data" in k]
    assert not [k for k in table if "stranger" in k or "other-namespace" in k or "operator-elsewhere" in k], \
        "unlabelled or foreign pods reach nothing"
    assert not [k for k in table if INTERNET in k], "nothing reaches the internet"
    assert ("train-dsh-submitter", "afm-ray-sim-worker") not in table and ("afm-ray-head", "postgres") not in table
    # the operator reaches the head's dashboard port and nothing else of afm-ray
    assert [k for k in table if k[0] in OPERATORS] == [(operator, "afm-ray-head") for operator in OPERATORS]
    # every policy of the namespace selects pods in it, and the default deny covers both directions
    deny = one(policies, "NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {} and policy_types(deny) == {"Ingress", "Egress"}
    assert not deny["spec"].get("ingress") and not deny["spec"].get("egress")


@pytest.mark.parametrize("platform", ["overlays/dev"])
def test_reachability_analysis_can_fail(rendered, platform):
    """The table reacts to the policies: without the default deny prepare-data reaches everything;
    a wider port list or a missing rule changes the table."""
    policies, endpoints, namespaces = network(rendered, platform)
    without_deny = [p for p in policies if p["metadata"]["name"] != "default-deny"]
    table = reachability(without_deny, endpoints, namespaces)
    # pods that no other policy selects for egress reach anything that accepts them ...
    assert table[("prepare-data", INTERNET)] == {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    assert table[("stranger", "prepare-data")] == {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    # ... but the ingress policies of MLflow and PostgreSQL still hold without the default deny
    assert ("prepare-data", "mlflow") not in table and ("stranger", "postgres") not in table
    wider = copy.deepcopy(policies)
    mlflow = one(wider, "NetworkPolicy", "mlflow")
    mlflow["spec"]["ingress"][0]["ports"].append({"port": 22, "protocol": "TCP"})
    # a connection needs egress from the source AND ingress at the destination
    assert reachability(wider, endpoints, namespaces)[("afm-ray-head", "mlflow")]["TCP"] == [(5000, 5000)]
    ray = one(wider, "NetworkPolicy", "ray-cluster")
    ray["spec"]["egress"][1]["ports"].append({"port": 22, "protocol": "TCP"})
    assert reachability(wider, endpoints, namespaces)[("afm-ray-head", "mlflow")]["TCP"] == [(22, 22), (5000, 5000)]
    no_operator = [p for p in policies if p["metadata"]["name"] != "ray-head-from-kuberay-operator"]
    assert not [k for k in reachability(no_operator, endpoints, namespaces) if k[0] in OPERATORS], \
        "the operator reaches the head only through its own policy"
    no_dns = [p for p in policies if p["metadata"]["name"] != "dns-platform"]
    assert ("mlflow", "kube-dns") not in reachability(no_dns, endpoints, namespaces)
    # a pod that carries the Ray label is a Ray pod to the policies: labels are not credentials,
    # which is why MLflow additionally requires a password
    impostor = Endpoint("impostor", NAMESPACE, {"app.kubernetes.io/component": "ray-node"})
    assert reachability(policies, endpoints + [impostor], namespaces)[("impostor", "mlflow")] == {"TCP": [(5000, 5000)]}


@pytest.mark.parametrize("platform", OVERLAYS)
def test_overlays_say_where_the_kuberay_operator_runs(platform):
    """The operator's namespace and labels are an overlay setting (the cluster's KubeRay install decides them)."""
    kustomization = yaml.safe_load((K8S / platform / "kustomization.yaml").read_text())
    patches = [p for p in kustomization["patches"]
               if p.get("target", {}).get("name") == "ray-head-from-kuberay-operator"]
    assert len(patches) == 1
    [operation] = yaml.safe_load(patches[0]["patch"])
    peer = operation["value"]
    assert operation["path"] == "/spec/ingress/0/from/0" and set(peer) == {"namespaceSelector", "podSelector"}
    assert peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == OTHER_PODS[OPERATORS[0]][0]


@pytest.mark.parametrize("platform", OVERLAYS)
def test_ray_policy_names_the_ports_ray_is_pinned_to(rendered, platform):
    cluster = one(rendered[platform], "RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    node_ports = {"node-manager-port", "object-manager-port", "dashboard-agent-grpc-port",
                  "dashboard-agent-listen-port", "runtime-env-agent-port", "metrics-export-port",
                  "min-worker-port", "max-worker-port"}
    pinned = []
    for group in groups:
        params = group["rayStartParams"]
        assert node_ports <= set(params), f"unpinned Ray ports: {node_ports - set(params)}"
        assert {k: params[k] for k in node_ports} == {k: groups[0]["rayStartParams"][k] for k in node_ports}
    head = cluster["spec"]["headGroupSpec"]["rayStartParams"]
    params = {**groups[1]["rayStartParams"], **head}
    pinned = [int(params[k]) for k in ("port", "dashboard-port", "ray-client-server-port", "node-manager-port",
                                       "object-manager-port", "dashboard-agent-grpc-port", "dashboard-agent-listen-port")]
    pinned.append((int(params["min-worker-port"]), int(params["max-worker-port"])))
    # what crosses pods (the runtime-env agent and metrics are reached from inside the pod / not at all)
    assert normalize(pinned + [(32768, 60999)]) == normalize(RAY_PORTS)
    policy = one(by_kind(rendered[platform], "NetworkPolicy"), "NetworkPolicy", "ray-cluster")
    for rule in policy["spec"]["ingress"] + policy["spec"]["egress"][:1]:
        opened = [(p["port"], p.get("endPort", p["port"])) for p in rule["ports"]]
        assert normalize(opened) == normalize(RAY_PORTS)
    # the container ports the head declares are the pinned ones
    declared = {p["containerPort"] for p in ray_container(cluster["spec"]["headGroupSpec"]["template"])["ports"]}
    assert declared == {int(head["port"]), int(head["dashboard-port"]), int(head["ray-client-server-port"]),
                        int(head["metrics-export-port"])}
