# Run once by the postgres image's entrypoint when it creates the database cluster (an empty volume):
# the MLflow server's own role, no superuser, owning its own database and nothing else. psql reads
# the names and the password from the environment (\getenv, PostgreSQL >= 15), so they appear on no
# command line; :"name" and :'text' quote them as identifier and literal.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv mlflow_user MLFLOW_DB_USER
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv mlflow_db MLFLOW_DB_NAME
CREATE ROLE :"mlflow_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'mlflow_password';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user";
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;
SQL
