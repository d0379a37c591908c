#!/bin/sh
# Makes Countersign's NATS credentials in operator mode with `nsc` (nats-io/nsc): an operator, its
# system account, the COUNTERSIGN account with JetStream, and one user per permission file in
# permissions/ (`pub`, `sub`, `deny-pub`, `deny-sub` lines), each user's JWT carrying exactly
# those permissions. Writes to $OUT (default ./nats-auth):
#
#   <user>.creds    the user's credentials file (JWT + NKey seed): a Secret per service
#   resolver.conf   operator JWT, system account and a memory resolver preloaded with the
#                   account JWTs: include it in nats-server's configuration
#   account         the COUNTERSIGN account's public key (ConfigMap countersign-nats `account`)
#
# PREFIX (default `countersign`) rewrites the subject prefix and the stream prefix for a bus with
# another `bus.prefix`. The manifest tests mint the same JWTs from the same files in Rust
# (tests/system/src/nats_auth.rs) and load them into a real nats-server.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PERMISSIONS=${PERMISSIONS:-$HERE/permissions}
OUT=${OUT:-./nats-auth}
PREFIX=${PREFIX:-countersign}
UPPER=$(printf '%s' "$PREFIX" | tr '[:lower:]' '[:upper:]')
ACCOUNT=COUNTERSIGN

mkdir -p "$OUT"
export NKEYS_PATH="$OUT/nsc/keys"
export NSC_HOME="$OUT/nsc/home"
nsc env --store "$OUT/nsc/store" >/dev/null

nsc add operator --name countersign --sys
nsc add account --name "$ACCOUNT"
nsc edit account --name "$ACCOUNT" \
  --js-mem-storage -1 --js-disk-storage -1 --js-streams -1 --js-consumer -1

for file in "$PERMISSIONS"/*.txt; do
  user=$(basename "$file" .txt)
  set --
  while read -r rule subject rest; do
    case "$rule" in
      ''|'#'*) continue ;;
    esac
    if [ -n "${rest:-}" ] || [ -z "${subject:-}" ]; then
      echo "$file: bad line: $rule $subject $rest" >&2
      exit 1
    fi
    subject=$(printf '%s' "$subject" | sed "s/^countersign\./$PREFIX./; s/COUNTERSIGN_/${UPPER}_/g")
    case "$rule" in
      pub) set -- "$@" --allow-pub "$subject" ;;
      sub) set -- "$@" --allow-sub "$subject" ;;
      deny-pub) set -- "$@" --deny-pub "$subject" ;;
      deny-sub) set -- "$@" --deny-sub "$subject" ;;
      *) echo "$file: unknown rule $rule" >&2; exit 1 ;;
    esac
  done < "$file"
  nsc add user --account "$ACCOUNT" --name "$user" "$@"
  nsc generate creds --account "$ACCOUNT" --name "$user" > "$OUT/$user.creds"
done

nsc generate config --mem-resolver --sys-account SYS --config-file "$OUT/resolver.conf" --force
nsc describe account --name "$ACCOUNT" --field sub | tr -d '"' > "$OUT/account"
echo "credentials in $OUT; COUNTERSIGN account $(cat "$OUT/account")"
