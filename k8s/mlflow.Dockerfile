# syntax=docker/dockerfile:1
# The MLflow tracking server (k8s/base/mlflow.yaml: basic-auth app), the bucket-creation Job and the
# account-bootstrap Job (/app/bootstrap_users.py): MLflow with the PostgreSQL driver and boto3 for
# S3/MinIO; the auth extra (Flask-WTF) that the basic-auth app imports. Build from the repository root:
#   docker build -f k8s/mlflow.Dockerfile -t afm-ray-mlflow:3.17.2 .
# MLFLOW_VERSION must equal the MLflow client of the afm-ray image (k8s/Dockerfile).
# the base pinned by digest (k8s/README.md, Images: how to move to a newer one)
FROM python:3.11.14-slim@sha256:c8271b1f627d0068857dce5b53e14a9558603b527e46f1f901722f935b786a39

ARG MLFLOW_VERSION=3.17.2
# the PostgreSQL driver (= the one tests/integration/test_mlflow_postgres.py runs with) and the S3 client, pinned
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.5
RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" "boto3==${BOTO3_VERSION}" \
 && useradd --uid 1000 --user-group --create-home mlflow
COPY --chmod=0444 k8s/mlflow/bootstrap_users.py /app/bootstrap_users.py
# numeric, so that Kubernetes can check runAsNonRoot against the image
USER 1000:1000
EXPOSE 5000
CMD ["mlflow", "server", "--help"]
