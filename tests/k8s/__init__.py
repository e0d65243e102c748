"""The tests of the Kubernetes deployment in ``k8s/``: container image, kustomize base and overlays, KubeRay
resources, one module per concern (rendering, cluster rules, RayCluster, RayJobs, MLflow, images, Pod Security,
NetworkPolicies, TLS) and the helpers they share (``manifests.py``, ``reachability.py``).

Nothing here needs a cluster or a docker engine. The kustomizations are rendered by a small
renderer, ``tests/k8s/kustomize.py`` (``resources``, ``namespace``, ``images``, ``secretGenerator`` /
``configMapGenerator``, ``patches`` with JSON 6902 or strategic-merge patches: what ``k8s/`` uses), once per
session (``tests/k8s/conftest.py``), and, where ``kubectl`` is
installed, compared with ``kubectl kustomize``. The output is validated against the Kubernetes
OpenAPI schemas (``kubernetes-validate``, strict) and the KubeRay CRD schemas
(``../shared/schemas/kuberay``), then checked for the rules of this deployment: nothing exposed
outside the cluster, credentials only through Secrets (never on a command line), requests and
limits on every container, the worker groups' custom resources matching what the RayJobs ask for,
and RayJob entrypoints that ``afm-ray`` accepts with configs that load.

Security (issue 16): every pod template, KubeRay's injected init container included, is checked
against the Pod Security Standards ("restricted", implemented in ``test_pod_security.py`` from the Kubernetes v1.32
definitions) with an explicit exception table, and the namespace must enforce the strictest level
all pods meet. The NetworkPolicies are evaluated with Kubernetes' semantics into a table of which
pod reaches which pod on which ports, compared exactly with the table the deployment promises.
MLflow must run its basic-auth app with every credential coming from Secrets through env vars.

Hardening (issue 29): the KubeRay operator (in its own namespace, set in the overlays) reaches the
head's dashboard port; MLflow holds neither MinIO's root account nor PostgreSQL's superuser; every
registry image is pinned by digest (or listed in UNPINNED_IMAGES with its reason) and the images'
Python packages are pinned.
"""
