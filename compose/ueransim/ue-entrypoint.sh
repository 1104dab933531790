#!/bin/sh
# UE entrypoint: run nr-ue (the command given), and on SIGTERM/SIGINT (`docker compose stop/down`)
# deregister first, as a phone switched off does: `nr-cli <supi> -e 'deregister switch-off'` makes
# nr-ue send a Deregistration Request (switch off) and exit 500 ms later (UERANSIM v3.2.6
# src/ue/app/task.cpp SWITCH_OFF_DELAY, src/ue.cpp PERFORM_SWITCH_OFF). nr-ue on its own exits on
# SIGTERM without deregistering, so the AMF and SMF would keep the UE's contexts and PDU session.
set -u

: "${UE_SUPI:?set UE_SUPI to the UE's SUPI (imsi-...)}"
DEREG_WAIT_S="${DEREG_WAIT_S:-5}"

"$@" &
child=$!

stop() {
    echo "ue-entrypoint: switching $UE_SUPI off (deregister switch-off)" >&2
    if nr-cli "$UE_SUPI" -e "deregister switch-off" >&2; then
        waited=0
        while kill -0 "$child" 2>/dev/null && [ "$waited" -lt "$((DEREG_WAIT_S * 10))" ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
    fi
    if kill -0 "$child" 2>/dev/null; then
        echo "ue-entrypoint: nr-ue still running after ${DEREG_WAIT_S}s: SIGTERM" >&2
        kill -TERM "$child" 2>/dev/null
    fi
    wait "$child"
    exit 0
}
trap stop TERM INT

wait "$child"
rc=$?
# a trap ran `stop`, which exits; reaching here means nr-ue ended by itself
exit "$rc"
