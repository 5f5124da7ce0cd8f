#!/usr/bin/env bash
# Starts (or stops) a 3-node Tollgate ledger on loopback, for trying the admin
# CLI by hand. Data and logs go under ${TOLLGATE_LOCAL_DIR:-./data}.
#   deploy/local-cluster.sh start        # build if needed, start nodes 1-3
#   deploy/local-cluster.sh start --tls  # the same over mutual TLS (a CA in $dir/pki)
#   deploy/local-cluster.sh status       # cluster status through every node
#   deploy/local-cluster.sh stop         # SIGTERM every node started here
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${TOLLGATE_LOCAL_DIR:-./data}
bin=./target/release/tollgate
peers=1=127.0.0.1:7071,2=127.0.0.1:7072,3=127.0.0.1:7073
servers=127.0.0.1:7071,127.0.0.1:7072,127.0.0.1:7073
pki="$dir/pki"
# TLS flags of a role's files in $pki, if the cluster was started with --tls.
tls_flags() {
  [ -f "$pki/$1.pem" ] && echo "--tls-ca $pki/ca.pem --tls-cert $pki/$1.pem --tls-key $pki/$1.key"
  return 0
}

case "${1:-start}" in
start)
  [ -x "$bin" ] || cargo build --release -p tollgate-node
  mkdir -p "$dir"
  if [ "${2:-}" = --tls ] && [ ! -f "$pki/ca.pem" ]; then
    "$bin" cert init --dir "$pki"
    for id in 1 2 3; do "$bin" cert issue --dir "$pki" --role ledger --id "$id" --host 127.0.0.1; done
    "$bin" cert issue --dir "$pki" --role admin --name local
    "$bin" cert issue --dir "$pki" --role edge --name local
  fi
  for id in 1 2 3; do
    if [ -f "$dir/n$id.pid" ] && kill -0 "$(cat "$dir/n$id.pid")" 2>/dev/null; then
      echo "node $id already running (pid $(cat "$dir/n$id.pid"))"
      continue
    fi
    extra=()
    [ "$id" = 1 ] && extra=(--bootstrap)
    # shellcheck disable=SC2046 # the flags split on purpose
    "$bin" ledger --id "$id" --grpc "127.0.0.1:707$id" --data-dir "$dir/n$id" --http "127.0.0.1:909$id" \
      --peers "$peers" $(tls_flags "ledger-$id") "${extra[@]}" >>"$dir/n$id.log" 2>&1 &
    echo $! >"$dir/n$id.pid"
    echo "node $id: pid $!, log $dir/n$id.log"
  done
  for _ in $(seq 1 50); do
    [ -s "$dir/n1/admin.token" ] && break
    sleep 0.2
  done
  echo
  echo "admin token: $dir/n1/admin.token"
  echo "try: $bin admin --server $servers --token-file $dir/n1/admin.token $(tls_flags admin-local) cluster status"
  if [ -f "$pki/edge-local.pem" ]; then echo "an edge: $bin edge --ledger $servers $(tls_flags edge-local)"; fi
  ;;
status)
  # shellcheck disable=SC2046
  "$bin" admin --server "$servers" $(tls_flags admin-local) cluster status
  ;;
stop)
  for id in 1 2 3; do
    if [ -f "$dir/n$id.pid" ]; then
      kill "$(cat "$dir/n$id.pid")" 2>/dev/null || true
      rm -f "$dir/n$id.pid"
    fi
  done
  ;;
*)
  echo "usage: $0 start [--tls]|status|stop" >&2
  exit 64
  ;;
esac
