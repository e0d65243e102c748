# syntax=docker/dockerfile:1
# The MLflow tracking server (k8s/base/mlflow.yaml: basic-auth app), the bucket-creation Job and the
# account-bootstrap Job (/app/bootstrap_users.py): MLflow with the PostgreSQL driver and boto3 for
# S3/MinIO; the auth extra (Flask-WTF) that the basic-auth app imports. Build from the repository root:
#   docker build -f k8s/mlflow.Dockerfile -t afm-ray-mlflow:3.17.2 .
# MLFLOW_VERSION must equal the MLflow client of the afm-ray image (k8s/Dockerfile).
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2
RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary>=2.9" "boto3>=1.34" \
 && useradd --uid 1000 --user-group --create-home mlflow
COPY --chmod=0444 k8s/mlflow/bootstrap_users.py /app/bootstrap_users.py
# numeric, so that Kubernetes can check runAsNonRoot against the image
USER 1000:1000
EXPOSE 5000
CMD ["mlflow", "server", "--help"]
