# The compose stack's MLflow tracking server: the official image plus the PostgreSQL driver and
# the S3 client that its backend store and artifact store need.
FROM ghcr.io/mlflow/mlflow:v3.17.0

RUN pip install --no-cache-dir psycopg2-binary==2.9.13 boto3==1.44.5
