#!/bin/sh
# The grafana-setup service of docker-compose.yml (postgres image, after `migrate`): makes the
# passwords Grafana needs, once, in the grafana-secrets volume, and (re)creates the read-only
# database role its data source signs in as.
#
#   /run/symbiont/grafana-db-password     the role's password (read by the data source)
#   /run/symbiont/grafana-admin-password  the initial password of Grafana's `admin` user
#
# Both are random and kept across runs; delete a file (docker compose run --rm grafana-setup
# recreates it) to change it.  Grafana reads the admin password only when it creates its
# database; docs/monitoring.md says how to change it later.
set -eu

# (the variables are for trying it elsewhere; Compose sets none of them)
dir=${GRAFANA_SECRETS_DIR:-/run/symbiont}
role=${GRAFANA_DB_ROLE:-symbiont_grafana}
sql=${GRAFANA_READER_SQL:-/setup/grafana-reader.sql}
random() { head -c 24 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_'; }

for name in grafana-db-password grafana-admin-password; do
  if [ ! -s "$dir/$name" ]; then
    random > "$dir/$name.new"
    mv "$dir/$name.new" "$dir/$name"
  fi
  chmod 0444 "$dir/$name" # Grafana runs as its own user; only its container mounts the volume
done

psql -v ON_ERROR_STOP=1 -q \
  -v reader="$role" \
  -v reader_password="$(cat "$dir/grafana-db-password")" \
  -f "$sql"
echo "grafana-setup: role $role ready"
