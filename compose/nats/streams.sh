#!/bin/sh
# One-shot, in the nats-box image, as the `admin` user: the streams the services expect, as NACK
# creates them in Kubernetes (../k8s/components/nack; defaults of countersign-events). Each service
# creates its own durable consumer; the services' users may not create or change streams.
set -eu
N="nats --server nats://nats:4222 --creds /auth/admin.creds"
for s in TASKRUNS:taskrun:taskruns REGISTRATIONS:registration:registrations ATTESTATIONS:attestation:attestations DEADLETTER:deadletter:deadletter TRUST:trust:trust; do
  name=${s%%:*}; rest=${s#*:}; root=${rest%%:*}; lower=${rest#*:}
  subjects="countersign.$root.>"
  # Exports and the gate's decisions are stored next to the verdicts (countersign-events' layout,
  # in its order: a stream whose subjects differ is one the services try to update).
  if [ "$name" = ATTESTATIONS ]; then subjects="$subjects,countersign.export.>,countersign.gate.>"; fi
  $N stream info "COUNTERSIGN_$name" >/dev/null 2>&1 || $N stream add "COUNTERSIGN_$name" \
    --subjects "$subjects" --description "Countersign $lower events" --storage file \
    --retention limits --discard old --max-age 336h --max-bytes 1073741824 --dupe-window 10m \
    --replicas 1 --max-msgs=-1 --max-msgs-per-subject=-1 --max-msg-size=-1 --no-allow-rollup \
    --no-deny-delete --no-deny-purge --defaults
done
