#!/bin/sh
# One-shot, in the nats-box image: the operator, the COUNTERSIGN account and one user per
# permission file (../k8s/nats/credentials.sh), written to the `nats-auth` volume once.
set -eu
if [ -f /auth/resolver.conf ]; then exit 0; fi
OUT=/auth sh /permissions/../credentials.sh
