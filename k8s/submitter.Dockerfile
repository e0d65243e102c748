# syntax=docker/dockerfile:1
# The RayJob submitter pods (k8s/jobs): KubeRay runs `ray job submit` / `ray job logs` in them,
# which talk HTTP to the head's dashboard (port 8265). That needs the Ray CLI with the job
# client (ray[default]), nothing of afm-ray, CUDA or PyTorch: a few hundred MB instead of the
# cluster image's many GB. Build (nothing from the context is used):
#   docker build -f k8s/submitter.Dockerfile -t afm-ray-submitter:2.60.0 k8s
# RAY_VERSION must equal the cluster's (k8s/Dockerfile, spec.rayVersion of the RayCluster).
# the base pinned by digest (k8s/README.md, Images: how to move to a newer one)
FROM python:3.11.14-slim@sha256:c8271b1f627d0068857dce5b53e14a9558603b527e46f1f901722f935b786a39

ARG RAY_VERSION=2.60.0
RUN pip install --no-cache-dir "ray[default]==${RAY_VERSION}" \
 && useradd --uid 1000 --user-group --create-home ray
# numeric, so that Kubernetes can check runAsNonRoot against the image
USER 1000:1000
WORKDIR /home/ray
CMD ["ray", "job", "--help"]
