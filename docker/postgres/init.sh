#!/usr/bin/env bash
# Runs once, when the postgres container starts on an empty data volume
# (/docker-entrypoint-initdb.d). Creates the anomaly database and its owner, a read-only
# role for Grafana, and MLflow's backend database. Passwords come from the environment.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-postgres}" \
    -v ae_pw="$AE_DB_PASSWORD" -v mlflow_pw="$MLFLOW_DB_PASSWORD" \
    -v grafana_pw="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE ae LOGIN PASSWORD :'ae_pw';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE ROLE grafana LOGIN PASSWORD :'grafana_pw';
CREATE DATABASE anomalies OWNER ae;
CREATE DATABASE mlflow OWNER mlflow;
SQL

# Grafana reads the anomaly table (created later by the first scoring run, owned by ae).
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname anomalies <<'SQL'
GRANT CONNECT ON DATABASE anomalies TO grafana;
GRANT USAGE ON SCHEMA public TO grafana;
ALTER DEFAULT PRIVILEGES FOR ROLE ae IN SCHEMA public GRANT SELECT ON TABLES TO grafana;
SQL
