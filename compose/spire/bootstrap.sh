#!/bin/sh
# One-shot, in the spire-server image's toolbox: a join token for the agent, and the entries of
# the services that use the Workload API (the attestor signs with its SVID; the registrar gets one
# for mTLS). Workloads are told apart by their Unix uid (each service's container runs as its own
# uid, see compose.yaml).
set -eu
S="spire-server"
SOCK="-socketPath /run/spire/server/api.sock"
until $S healthcheck $SOCK >/dev/null 2>&1; do sleep 1; done
TD=example.org
AGENT="spiffe://$TD/compose/agent"
$S token generate $SOCK -spiffeID "$AGENT" -ttl 86400 | sed -n 's/^Token: //p' > /run/spire/token/join-token
$S entry create $SOCK -parentID "$AGENT" -spiffeID "spiffe://$TD/countersign/attestor" -selector unix:uid:65533 || true
$S entry create $SOCK -parentID "$AGENT" -spiffeID "spiffe://$TD/countersign/registrar" -selector unix:uid:65534 -admin || true
