#!/usr/bin/env bash
# Make the local federation's secret files (docker/compose.yaml mounts them as docker secrets).
# They are written under docker/secrets/ (git-ignored; folders 0700) and never overwritten. The
# files are 0644: compose mounts file secrets as they are on the host, and the containers' users
# (airflow, postgres) are not the host user; the 0700 folder keeps other host users out.
#
#   docker/init-secrets.sh sites         random keys and passwords for hospital_a/b/c and central
#   docker/init-secrets.sh connections   after the hospitals are up: issue each node a credential
#                                        for the central site and write the central's connections
#   docker/init-secrets.sh roster        local federation only: each hospital pins the others'
#                                        secure-aggregation keys (real sites compare fingerprints
#                                        out of band: mipflow secagg key / pin --fingerprint)
# MIPFLOW_SECRETS_DIR overrides the folder (default: docker/secrets beside this script), as in
# docker/compose.yaml.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${MIPFLOW_SECRETS_DIR:-$here/secrets}"
sites=(hospital_a hospital_b hospital_c central)
umask 077

put() {  # put FILE CONTENT: write once (an empty file is a placeholder)
    [[ -s "$1" ]] && return 0
    mkdir -p "$(dirname "$1")"
    printf '%s' "$2" > "$1"
    chmod 0644 "$1"
}

random() { python3 -c "import secrets; print(secrets.token_urlsafe($1))"; }

case "${1:-}" in
    sites)
        for site in "${sites[@]}"; do
            put "$dir/$site/db_password" "$(random 24)"
            put "$dir/$site/fernet_key" "$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')"
            put "$dir/$site/jwt_secret" "$(random 32)"
            put "$dir/$site/api_secret_key" "$(random 32)"
            put "$dir/$site/airflow_passwords" "{\"admin\": \"$(random 12)\"}"
        done
        echo "secrets in $dir (the Airflow admin passwords are in */airflow_passwords)" ;;
    connections)
        for site in hospital_a hospital_b hospital_c; do  # compose wants every secret file to exist
            put "$dir/central/conn_$site.json" ""
        done
        for site in hospital_a hospital_b hospital_c; do
            service="hospital-${site#hospital_}-node-api"
            clients="$(docker compose -f "$here/compose.yaml" run --rm -T "$service" \
                sh -c 'mipflow node add-client /data/node --client central >/dev/null && cat /data/node/clients.json')"
            put "$dir/central/conn_$site.json" "$(CLIENTS="$clients" SITE="$site" SERVICE="$service" python3 -c '
import json, os
secret = json.loads(os.environ["CLIENTS"])["central"]["secret"]
print(json.dumps({"conn_type": "mipflow_node", "host": "http://" + os.environ["SERVICE"] + ":8700",
                  "login": "central", "password": secret, "extra": {"node_name": os.environ["SITE"]}}))')"
        done
        echo "connections in $dir/central" ;;
    roster)
        declare -A keys
        for site in hospital_a hospital_b hospital_c; do
            service="hospital-${site#hospital_}-node-api"
            keys[$site]="$(docker compose -f "$here/compose.yaml" run --rm -T "$service" \
                mipflow secagg key /data/node | python3 -c 'import json, sys; print(json.load(sys.stdin)["public_key"])')"
        done
        for site in hospital_a hospital_b hospital_c; do
            service="hospital-${site#hospital_}-node-api"
            for peer in hospital_a hospital_b hospital_c; do
                [[ "$peer" == "$site" ]] && continue
                docker compose -f "$here/compose.yaml" run --rm -T "$service" \
                    mipflow secagg pin /data/node --peer "$peer" --public-key "${keys[$peer]}" >/dev/null
            done
        done
        echo "each hospital pinned the others' secure-aggregation keys" ;;
    *)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 64 ;;
esac
