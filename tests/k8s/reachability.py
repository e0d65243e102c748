"""NetworkPolicies evaluated with Kubernetes' semantics: which pod reaches which pod on which ports, and the
table the deployment promises."""

from __future__ import annotations

from k8s.manifests import selects


NAMESPACE = "afm-ray"
RAY_PODS = ["afm-ray-head", "afm-ray-sim-worker", "afm-ray-train-worker"]
SUBMITTERS = ["train-dsh-submitter", "tune-xyz-submitter"]
OPERATORS = ["kuberay-operator-helm", "kuberay-operator-kustomize"]
INTERNET = "internet"
ALL_PORTS = [(1, 65535)]
RAY_PORTS = [6379, 8265, 10001, 6380, 6381, 6383, 52365, (10002, 19999),
             (32768, 60999)]   # the last: torch.distributed (DDP) on the kernel's ephemeral ports


def normalize(ports) -> list[tuple[int, int]]:
    intervals = sorted((p, p) if isinstance(p, int) else tuple(p) for p in ports)
    merged: list[list[int]] = []
    for low, high in intervals:
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return [tuple(m) for m in merged]


class Endpoint:
    def __init__(self, name: str, namespace: str | None, labels: dict, template: dict | None = None):
        self.name, self.namespace, self.labels, self.template = name, namespace, labels, template

    def named_port(self, name: str) -> int | None:
        for container in (self.template or {}).get("spec", {}).get("containers", []):
            for port in container.get("ports", []):
                if port.get("name") == name:
                    return port["containerPort"]
        return None


def peer_matches(peer: dict, policy_namespace: str, target: Endpoint, namespaces: dict[str, dict]) -> bool:
    if set(peer) - {"podSelector", "namespaceSelector", "ipBlock"}:
        raise NotImplementedError(f"peer {peer}")
    if "ipBlock" in peer:
        import ipaddress

        block = peer["ipBlock"]
        if target.name != INTERNET:   # pod IPs are not known here: treat an ipBlock as the outside world
            return False
        address = ipaddress.ip_address("1.1.1.1")
        return address in ipaddress.ip_network(block["cidr"]) and \
            not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
    if target.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespaces[target.namespace]):
            return False
    elif target.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), target.labels)


def rule_ports(rule: dict, destination: Endpoint) -> dict[str, list]:
    """{protocol: intervals} that one ingress/egress rule opens towards a destination."""
    if not rule.get("ports"):
        return {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    opened: dict[str, list] = {"TCP": [], "UDP": []}
    for port in rule["ports"]:
        protocol = port.get("protocol", "TCP")
        number = port.get("port")
        if number is None:
            opened.setdefault(protocol, []).extend(ALL_PORTS)
            continue
        if isinstance(number, str):
            number = destination.named_port(number)
            if number is None:
                continue
        opened.setdefault(protocol, []).append((number, port.get("endPort", number)))
    return {protocol: normalize(intervals) for protocol, intervals in opened.items()}


def policy_types(policy: dict) -> set[str]:
    spec = policy["spec"]
    return set(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def allowed(direction: str, subject: Endpoint, peer: Endpoint, destination: Endpoint, policies, namespaces) -> dict[str, list]:
    """Ports (per protocol) the policies of the subject's namespace allow in one direction: every
    port when no policy of that type selects the subject, else the union over the selecting
    policies' rules whose peers match."""
    if subject.namespace is None:
        return {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    kind, key, peers_key = ("Egress", "egress", "to") if direction == "egress" else ("Ingress", "ingress", "from")
    selecting = [p for p in policies if p["metadata"]["namespace"] == subject.namespace
                 and kind in policy_types(p) and selects(p["spec"]["podSelector"], subject.labels)]
    if not selecting:
        return {"TCP": ALL_PORTS, "UDP": ALL_PORTS}
    opened: dict[str, list] = {"TCP": [], "UDP": []}
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(peer_matches(p, policy["metadata"]["namespace"], peer, namespaces) for p in peers):
                continue
            for protocol, intervals in rule_ports(rule, destination).items():
                opened.setdefault(protocol, []).extend(intervals)
    return {protocol: normalize(intervals) for protocol, intervals in opened.items()}


def expected_reachability() -> dict:
    table: dict = {}

    def allow(source, destination, ports, protocol="TCP"):
        table.setdefault((source, destination), {})[protocol] = normalize(ports)

    for source in RAY_PODS:
        for destination in RAY_PODS:
            allow(source, destination, RAY_PORTS)          # each other, replicas of a group included
        allow(source, "mlflow", [5000])
    for submitter in SUBMITTERS:
        allow(submitter, "afm-ray-head", [8265])
    for operator in OPERATORS:                             # RayJob status, stopping a deleted RayJob's job
        allow(operator, "afm-ray-head", [8265])
    allow("mlflow", "postgres", [5432])
    allow("mlflow", "minio", [9000])
    allow("mlflow-bootstrap", "mlflow", [5000])            # creates the job account
    allow("create-bucket", "minio", [9000])                # creates the artifact bucket
    for pod in RAY_PODS + SUBMITTERS + ["mlflow", "mlflow-bootstrap", "create-bucket"]:
        allow(pod, "kube-dns", [53], "TCP")
        allow(pod, "kube-dns", [53], "UDP")
    return table                                           # prepare-data: nothing at all
