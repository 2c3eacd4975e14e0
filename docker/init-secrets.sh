#!/usr/bin/env bash
# Make the local federation's secret files (docker/compose.yaml mounts them as docker secrets).
# They are written under docker/secrets/ (git-ignored; folders 0700) and never overwritten. The
# files are 0644 (private TLS keys excepted, see below): compose mounts file secrets as they are on
# the host, and the containers' users (airflow, postgres) are not the host user; the 0700 folder
# keeps other host users out.
#
#   docker/init-secrets.sh sites         random keys and passwords for hospital_a/b/c and central,
#                                        then the `tls` step
#   docker/init-secrets.sh tls           a development CA (ca/ca.crt, ca.key), each node API's server
#                                        certificate (hospital_X/tls/node.crt, node.key: DNS names
#                                        hospital-X-node-api and localhost, IP 127.0.0.1) and the
#                                        central's client certificate (central/tls/central.crt, .key);
#                                        keys 0600. Needs a Python with `cryptography` (MIPFLOW_PYTHON,
#                                        default the repository's .venv, else python3); real sites
#                                        use their PKI and put its files in the same places
#   docker/init-secrets.sh connections   after the hospitals are up: issue each node a credential
#                                        for the central site and write the central's connections
#   docker/init-secrets.sh roster        local federation only: each hospital pins the others'
#                                        secure-aggregation keys (real sites compare fingerprints
#                                        out of band: mipflow secagg key / pin --fingerprint)
# MIPFLOW_SECRETS_DIR overrides the folder (default: docker/secrets beside this script), as in
# docker/compose.yaml. Private keys stay 0600 here: the one-shot *-tls services of compose.yaml copy
# them into the sites' volumes (owned by the containers' user, 0600), they are never in an image.
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

issue_tls() {  # the development CA and certificates, with mipflow's own library (as `mipflow tls`)
    local python="${MIPFLOW_PYTHON:-}"
    if [[ -z "$python" ]]; then
        python=python3
        [[ -x "$here/../.venv/bin/python" ]] && python="$here/../.venv/bin/python"
    fi
    SECRETS="$dir" PYTHONPATH="$here/../plugins${PYTHONPATH:+:$PYTHONPATH}" "$python" - <<'PY'
import os
import sys
from pathlib import Path

try:
    from mipflow.protocol import tls
except ImportError as exc:
    sys.exit(f"init-secrets.sh tls: needs a Python with cryptography (set MIPFLOW_PYTHON): {exc}")

secrets = Path(os.environ["SECRETS"])
ca = secrets / "ca"
new_ca = not (ca / tls.CA_CERT).is_file()
if new_ca:  # a new CA invalidates every certificate it did not sign: issue them all again
    tls.make_ca(ca, common_name="mipflow compose development CA")
wanted = {secrets / site / "tls" / "node": ("server", [f"hospital-{site[-1]}-node-api", "localhost"], ["127.0.0.1"])
          for site in ("hospital_a", "hospital_b", "hospital_c")}
wanted[secrets / "central" / "tls" / "central"] = ("client", [], [])
for prefix, (usage, dns_names, ips) in wanted.items():
    cert, key = prefix.with_suffix(".crt"), prefix.with_suffix(".key")
    if new_ca or not (cert.is_file() and key.is_file()):
        prefix.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tls.issue_certificate(ca, cert, key, common_name=prefix.parent.parent.name, usage=usage,
                              dns_names=dns_names, ip_addresses=ips)
    cert.chmod(0o644)  # certificates are public; keys stay 0600
    key.chmod(0o600)
(ca / tls.CA_CERT).chmod(0o644)
PY
}

case "${1:-}" in
    sites)
        for site in "${sites[@]}"; do
            put "$dir/$site/db_password" "$(random 24)"
            put "$dir/$site/fernet_key" "$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')"
            put "$dir/$site/jwt_secret" "$(random 32)"
            put "$dir/$site/api_secret_key" "$(random 32)"
            put "$dir/$site/airflow_passwords" "{\"admin\": \"$(random 12)\"}"
        done
        issue_tls
        echo "secrets in $dir (the Airflow admin passwords are in */airflow_passwords; TLS in ca/, */tls/)" ;;
    tls)
        issue_tls
        echo "development CA in $dir/ca (its key never leaves this folder), certificates in $dir/*/tls" ;;
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
tls = "/data/central/tls/"  # where the central-tls service installs them (docker/compose.yaml)
print(json.dumps({"conn_type": "mipflow_node", "host": "https://" + os.environ["SERVICE"] + ":8700",
                  "login": "central", "password": secret,
                  "extra": {"node_name": os.environ["SITE"], "ca_cert": tls + "ca.crt",
                            "client_cert": tls + "central.crt", "client_key": tls + "central.key"}}))')"
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
        sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 64 ;;
esac
