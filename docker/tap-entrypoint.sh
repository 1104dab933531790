#!/bin/sh
# Entrypoint of the tap image: turn TAP_SUBNETS (CIDRs) and TAP_IFACES (names) into --iface
# options, then exec `upf-tap live`. Interfaces are found by the subnet of their address
# because Docker does not promise which network becomes eth0, eth1, ...; named ones (ogstun,
# created by the UPF after start) are waited for. Arguments are passed on to upf-tap.
set -eu

WAIT_S="${TAP_WAIT_S:-60}"
ifaces=""

for cidr in $(printf '%s' "${TAP_SUBNETS:-}" | tr ',' ' '); do
    ifc=$(ip -o -4 addr show to "$cidr" | awk '{print $2; exit}')
    if [ -z "$ifc" ]; then
        echo "tap-entrypoint: no interface has an address in $cidr (is this the UPF's namespace?)" >&2
        exit 2
    fi
    ifaces="$ifaces $ifc"
done

for name in $(printf '%s' "${TAP_IFACES:-}" | tr ',' ' '); do
    waited=0
    until [ -e "/sys/class/net/$name" ]; do
        if [ "$waited" -ge "$WAIT_S" ]; then
            echo "tap-entrypoint: interface $name did not appear within ${WAIT_S}s" >&2
            exit 2
        fi
        sleep 1
        waited=$((waited + 1))
    done
    ifaces="$ifaces $name"
done

if [ -z "$ifaces" ] && [ "${1:-}" != "--help" ]; then
    echo "tap-entrypoint: set TAP_SUBNETS and/or TAP_IFACES" >&2
    exit 2
fi

set -- live "$@"
for ifc in $ifaces; do
    set -- "$@" --iface "$ifc"
done
echo "tap-entrypoint: upf-tap $*" >&2
exec upf-tap "$@"
