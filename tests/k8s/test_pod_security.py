"""Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/): every
pod meets "restricted" (with an explicit exception table), root filesystems are read-only, pods run as the
images' non-root users, the namespace enforces the strictest level every pod meets."""

from __future__ import annotations

import pytest

from k8s.kustomize import split_image
from k8s.manifests import K8S, KUBERNETES_VERSION, OVERLAYS, env_of, image_user, one, platform_pods


LEVELS = ["restricted", "baseline", "privileged"]   # strictest first
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
NOT_VOLUME_SOURCE = {"name"}

# Pods allowed to break a rule, and why; a rule here is a Pod Security rule (below) or
# "readOnlyRootFilesystem" (not part of the standard, required of every container of afm-ray).
# Every pod of afm-ray meets "restricted" and has a read-only root filesystem, so the table is
# empty; an entry needs its reason, and k8s/README.md lists the same entries.
EXCEPTIONS: list[tuple[str, str, str]] = []


def pod_security_violations(template: dict) -> list[tuple[str, str, str]]:
    """(level the rule belongs to, rule, detail) for every Pod Security Standards rule a pod
    template breaks. A pod meets "baseline" without baseline violations and "restricted" without
    any."""
    spec, metadata = template["spec"], template.get("metadata", {})
    pod_context = spec.get("securityContext") or {}
    all_containers = [("container", c) for c in spec.get("containers", [])] + \
        [("initContainer", c) for c in spec.get("initContainers", [])] + \
        [("ephemeralContainer", c) for c in spec.get("ephemeralContainers", [])]
    found = []

    def violation(level, rule, detail):
        found.append((level, rule, detail))

    # ---- baseline
    if (pod_context.get("windowsOptions") or {}).get("hostProcess"):
        violation("baseline", "hostProcess", "pod")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            violation("baseline", "hostNamespaces", field)
    for volume in spec.get("volumes", []):
        source = set(volume) - NOT_VOLUME_SOURCE
        if "hostPath" in source:
            violation("baseline", "hostPathVolumes", volume["name"])
        if not source <= RESTRICTED_VOLUMES:
            violation("restricted", "volumeTypes", f"{volume['name']}: {sorted(source - RESTRICTED_VOLUMES)}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            violation("baseline", "sysctls", sysctl["name"])
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and \
                not (value == "runtime/default" or value.startswith("localhost/")):
            violation("baseline", "appArmor", f"{key}={value}")

    def selinux(context, where):
        options = context.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES or options.get("user") or options.get("role"):
            violation("baseline", "seLinux", where)

    def apparmor(context, where):
        profile = context.get("appArmorProfile") or {}
        if profile.get("type") not in (None, "RuntimeDefault", "Localhost"):
            violation("baseline", "appArmor", where)

    def seccomp_type(context):
        return (context.get("seccompProfile") or {}).get("type")

    selinux(pod_context, "pod")
    apparmor(pod_context, "pod")
    if seccomp_type(pod_context) == "Unconfined":
        violation("baseline", "seccomp", "pod: Unconfined")
    for kind, container in all_containers:
        where = f"{kind} {container['name']}"
        context = container.get("securityContext") or {}
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            violation("baseline", "hostProcess", where)
        if context.get("privileged"):
            violation("baseline", "privileged", where)
        added = set((context.get("capabilities") or {}).get("add", []))
        if added - BASELINE_CAPABILITIES:
            violation("baseline", "capabilities", f"{where} adds {sorted(added - BASELINE_CAPABILITIES)}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                violation("baseline", "hostPorts", f"{where}: {port['hostPort']}")
        selinux(context, where)
        apparmor(context, where)
        if context.get("procMount", "Default") != "Default":
            violation("baseline", "procMount", where)
        if seccomp_type(context) == "Unconfined":
            violation("baseline", "seccomp", f"{where}: Unconfined")

    # ---- restricted
    for kind, container in all_containers:
        where = f"{kind} {container['name']}"
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            violation("restricted", "allowPrivilegeEscalation", where)
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            violation("restricted", "runAsNonRoot", where)
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0 or context.get("runAsUser") == 0:
            violation("restricted", "runAsUser", where)
        if seccomp_type(context) not in ("RuntimeDefault", "Localhost") and \
                not (seccomp_type(context) is None and seccomp_type(pod_context) in ("RuntimeDefault", "Localhost")):
            violation("restricted", "seccomp", where)
        capabilities = context.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            violation("restricted", "capabilities", f"{where} does not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            violation("restricted", "capabilities", f"{where} adds {capabilities['add']}")
    if pod_context.get("runAsUser") == 0:
        violation("restricted", "runAsUser", "pod")
    return found


def strictest_level(violations) -> str:
    levels = {level for level, _, _ in violations}
    return "privileged" if "baseline" in levels else "baseline" if "restricted" in levels else "restricted"


def unexcused(pod: str, violations) -> list:
    excused = {(p, rule) for p, rule, _ in EXCEPTIONS}
    return [v for v in violations if (pod, v[1]) not in excused]


def good_pod() -> dict:
    return {"metadata": {"labels": {"app.kubernetes.io/name": "good"}},
            "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "c", "image": "x",
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}}}],
                     "volumes": [{"name": "v", "emptyDir": {}}]}}


@pytest.mark.parametrize("mutation,level,rule", [
    (lambda p: p["spec"].update(hostNetwork=True), "baseline", "hostNamespaces"),
    (lambda p: p["spec"].update(hostPID=True), "baseline", "hostNamespaces"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(privileged=True), "baseline", "privileged"),
    (lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "baseline", "hostPathVolumes"),
    (lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}), "restricted", "volumeTypes"),
    (lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]), "baseline", "hostPorts"),
    (lambda p: p["spec"]["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "baseline", "capabilities"),
    (lambda p: p["spec"]["containers"][0]["securityContext"]["capabilities"].update(add=["CHOWN"]), "restricted", "capabilities"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].pop("capabilities"), "restricted", "capabilities"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "restricted", "allowPrivilegeEscalation"),
    (lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"), "restricted", "runAsNonRoot"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(runAsNonRoot=False), "restricted", "runAsNonRoot"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(runAsUser=0), "restricted", "runAsUser"),
    (lambda p: p["spec"]["securityContext"].pop("seccompProfile"), "restricted", "seccomp"),
    (lambda p: p["spec"]["securityContext"].update(seccompProfile={"type": "Unconfined"}), "baseline", "seccomp"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(procMount="Unmasked"), "baseline", "procMount"),
    (lambda p: p["spec"]["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "baseline", "sysctls"),
    (lambda p: p["spec"]["containers"][0]["securityContext"].update(seLinuxOptions={"type": "spc_t"}), "baseline", "seLinux"),
    (lambda p: p["spec"].update(initContainers=[{"name": "init", "image": "x"}]), "restricted", "allowPrivilegeEscalation"),
])
def test_pod_security_checker_rejects_known_bad_pods(mutation, level, rule):
    assert pod_security_violations(good_pod()) == []
    bad = good_pod()
    mutation(bad)
    violations = pod_security_violations(bad)
    assert (level, rule) in {(v[0], v[1]) for v in violations}, violations
    assert strictest_level(violations) == ("privileged" if level == "baseline" else "baseline")


@pytest.mark.parametrize("platform", OVERLAYS)
def test_every_pod_meets_pod_security_restricted(rendered, platform):
    pods = platform_pods(rendered, platform)
    assert {"mlflow", "postgres", "minio", "create-bucket", "mlflow-bootstrap", "prepare-data", "afm-ray-head",
            "afm-ray-sim-worker", "afm-ray-train-worker", "train-dsh-submitter", "tune-xyz-submitter"} <= set(pods)
    problems = {name: unexcused(name, pod_security_violations(t)) for name, t in pods.items()}
    assert not {name: v for name, v in problems.items() if v}, problems
    # the exception table is exact: every entry names a pod and a rule it really breaks, with a reason
    for pod, rule, why in EXCEPTIONS:
        assert pod in pods and len(why) > 20, (pod, rule)
        broken = {v[1] for v in pod_security_violations(pods[pod])} | \
            ({"readOnlyRootFilesystem"} if read_write_containers(pods[pod]) else set())
        assert rule in broken, f"exception ({pod}, {rule}) is not needed: remove it"


def read_write_containers(template: dict) -> list[str]:
    spec = template["spec"]
    return [c["name"] for c in spec["containers"] + spec.get("initContainers", [])
            if not (c.get("securityContext") or {}).get("readOnlyRootFilesystem")]


@pytest.mark.parametrize("platform", OVERLAYS)
def test_root_filesystems_are_read_only_with_writable_scratch(rendered, platform):
    excused = {pod for pod, rule, _ in EXCEPTIONS if rule == "readOnlyRootFilesystem"}
    for name, template in platform_pods(rendered, platform).items():
        if name not in excused:
            assert not read_write_containers(template), f"{name}: {read_write_containers(template)}"
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for container in template["spec"]["containers"]:
            mounts = {m["mountPath"]: volumes.get(m["name"], {"persistentVolumeClaim": {}})   # volumeClaimTemplates
                      for m in container.get("volumeMounts", [])}
            if container["name"] != "postgres":
                assert "emptyDir" in mounts.get("/tmp", {}), f"{name}: {container['name']} needs a writable /tmp"
            for variable in ("HOME", "XDG_CACHE_HOME", "CUDA_CACHE_PATH", "MPLCONFIGDIR"):
                value = env_of(container).get(variable, {}).get("value")
                if value:
                    assert value == "/tmp" or value.startswith("/tmp/"), f"{name}: {variable}={value} is read-only"
    # Ray: session files and spilled objects in /tmp/ray, kernel caches under XDG_CACHE_HOME
    pods = platform_pods(rendered, platform)
    for name in ("afm-ray-head", "afm-ray-sim-worker", "afm-ray-train-worker"):
        env = env_of(pods[name]["spec"]["containers"][0])
        assert env["XDG_CACHE_HOME"]["value"].startswith("/tmp/")
    # PostgreSQL: data on its volume, socket and temporary files on emptyDirs
    postgres = pods["postgres"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in postgres["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in postgres["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/run/postgresql"]] and "emptyDir" in volumes[mounts["/tmp"]]
    pgdata = env_of(postgres["containers"][0])["PGDATA"]["value"]
    assert pgdata.startswith("/var/lib/postgresql/data/") and mounts["/var/lib/postgresql/data"] == "postgres-data"


@pytest.mark.parametrize("platform", OVERLAYS)
def test_pods_run_as_the_images_non_root_users(rendered, platform):
    pods = platform_pods(rendered, platform)
    users = {"afm-ray": image_user(K8S / "Dockerfile"), "afm-ray-mlflow": image_user(K8S / "mlflow.Dockerfile"),
             "afm-ray-submitter": image_user(K8S / "submitter.Dockerfile"),
             "postgres": (999, 999),   # the official image's postgres user
             "minio/minio": None,      # any uid that owns /data (fsGroup)
             "minio/mc": None}         # a static binary: any uid (its config under /tmp)
    for name, template in pods.items():
        context = template["spec"]["securityContext"]
        image = split_image(template["spec"]["containers"][0]["image"])[0]
        key = next(k for k in users if image == k or image.endswith("/" + k))
        expected = users[key]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, name
        if expected:
            assert (context["runAsUser"], context.get("runAsGroup")) == expected, f"{name}: image {image} runs as {expected}"
        if any("persistentVolumeClaim" in v for v in template["spec"].get("volumes", [])) or \
                template is pods.get("postgres"):
            assert context.get("fsGroup") == context["runAsGroup"], f"{name}: volumes must be writable (fsGroup)"
        assert template["spec"].get("automountServiceAccountToken") is False, f"{name} needs no Kubernetes API"


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_namespace_enforces_the_strictest_level_every_pod_meets(rendered, name):
    namespace = one(rendered[name], "Namespace")
    labels = namespace["metadata"]["labels"]
    platform = name if name != "base" else "overlays/dev"
    pods = platform_pods(rendered, platform)
    met = [strictest_level(unexcused(pod, pod_security_violations(t))) for pod, t in pods.items()]
    level = max(met, key=LEVELS.index)
    assert labels["pod-security.kubernetes.io/enforce"] == level == "restricted"
    for mode in ("audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == level
    version = "v" + ".".join(KUBERNETES_VERSION.split(".")[:2])
    assert {labels[f"pod-security.kubernetes.io/{m}-version"] for m in ("enforce", "audit", "warn")} == {version}
    # the level is truly the strictest: one non-conforming pod would have to lower it
    bad = good_pod()
    bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert max(met + [strictest_level(pod_security_violations(bad))], key=LEVELS.index) == "baseline"
