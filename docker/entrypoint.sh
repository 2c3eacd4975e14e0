#!/usr/bin/env bash
# mipflow service entrypoint: the one place that says how each service starts.
#
# The images run it (ENTRYPOINT), docker/compose.yaml names the role of each container, and
# tests/test_celery_deployment.py starts its Airflow components through it, so the commands
# that are tested are the ones that ship.
#
#   entrypoint.sh ROLE
#
# Roles
#   migrate         create or upgrade the Airflow metadata database, then exit
#   scheduler       Airflow scheduler (CeleryExecutor, LocalExecutor or any configured executor)
#   dag-processor   Airflow DAG processor
#   triggerer       Airflow triggerer (deferrable tasks)
#   api-server      Airflow api-server (UI, REST API, task execution API, mipflow result pages)
#   celery-worker   Airflow Celery worker (needs AIRFLOW__CORE__EXECUTOR=CeleryExecutor)
#   node-init       create the node home $MIPFLOW_NODE_HOME once, register $MIPFLOW_NODE_DATA_MODELS
#   node-api        the hospital node's aggregate API (the only port a node opens to the central site)
#   anything else   run as a command (e.g. `mipflow access grant ...`)
#
# Secrets from files (docker secrets are files under /run/secrets): for NAME_FILE, where NAME is
# PGPASSWORD (libpq: the feature store's password, kept out of node.json), AIRFLOW_CONN_* (a
# connection) or AIRFLOW_VAR_* (a variable), NAME is set to the file's content. Airflow's own
# sensitive options take AIRFLOW__SECTION__KEY_CMD (e.g. `cat /run/secrets/x`) or a secrets backend.
# A read-only AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE (a mounted secret) is copied to
# $AIRFLOW_HOME first: Airflow opens that file for appending.
set -euo pipefail

load_file_secrets() {
    local name var
    while IFS= read -r name; do
        var="${name%_FILE}"
        case "$var" in
            PGPASSWORD|AIRFLOW_CONN_?*|AIRFLOW_VAR_?*) ;;
            *) continue ;;  # other *_FILE variables are paths (e.g. AIRFLOW__..._PASSWORDS_FILE)
        esac
        if [[ -n "${!var:-}" ]]; then
            echo "entrypoint: both $var and ${var}_FILE are set; use one" >&2
            exit 64
        fi
        if [[ ! -r "${!name}" ]]; then
            echo "entrypoint: ${name} names ${!name}, which cannot be read" >&2
            exit 66
        fi
        # strip one trailing newline, as secret files usually end with one
        printf -v "$var" '%s' "$(<"${!name}")"
        export "${var?}"
        unset "$name"
    done < <(compgen -e | grep -E '^[A-Za-z_][A-Za-z0-9_]*_FILE$' || true)
}

require() {
    local var
    for var in "$@"; do
        if [[ -z "${!var:-}" ]]; then
            echo "entrypoint: $var must be set for role ${ROLE}" >&2
            exit 64
        fi
    done
}

writable_passwords_file() {
    # Airflow's simple auth manager opens its passwords file for appending (it adds generated
    # passwords), but secrets are mounted read-only: start from a private copy of a read-only one.
    local file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}" copy
    [[ -n "$file" && -f "$file" && ! -w "$file" ]] || return 0
    copy="${AIRFLOW_HOME:-$HOME/airflow}/simple_auth_manager_passwords.json"
    mkdir -p "$(dirname "$copy")"
    (umask 077; cat "$file" > "$copy")
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$copy"
}

ROLE="${1:-}"
if [[ -z "$ROLE" ]]; then
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
fi
shift
load_file_secrets
writable_passwords_file

case "$ROLE" in
    migrate)
        exec airflow db migrate "$@" ;;
    scheduler|dag-processor|triggerer)
        exec airflow "$ROLE" "$@" ;;
    api-server)
        exec airflow api-server "$@" ;;
    celery-worker)
        exec airflow celery worker "$@" ;;
    node-init)
        require MIPFLOW_NODE_HOME MIPFLOW_NODE_NAME
        if [[ ! -f "$MIPFLOW_NODE_HOME/node.json" ]]; then
            mipflow node init "$MIPFLOW_NODE_HOME" --name "$MIPFLOW_NODE_NAME" \
                ${MIPFLOW_NODE_DB_URL:+--db-url "$MIPFLOW_NODE_DB_URL"}
        fi
        IFS=',' read -r -a models <<< "${MIPFLOW_NODE_DATA_MODELS:-}"
        for model in "${models[@]}"; do
            [[ -n "$model" ]] && mipflow data-model add "$MIPFLOW_NODE_HOME" "$model"
        done
        exit 0 ;;
    node-api)
        require MIPFLOW_NODE_HOME
        exec mipflow node serve "$MIPFLOW_NODE_HOME" --host "${MIPFLOW_NODE_API_HOST:-0.0.0.0}" \
            --port "${MIPFLOW_NODE_API_PORT:-8700}" "$@" ;;
    *)
        exec "$ROLE" "$@" ;;
esac
