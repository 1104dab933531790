#!/bin/bash
# UPF entrypoint: create ogstun, give it the UE gateway address and MTU, NAT what leaves
# towards the DN, then exec the daemon given as arguments.
# It writes nothing under /proc/sys (read-only in an unprivileged container): Compose sets
# net.ipv4.ip_forward through `sysctls:`. Needs CAP_NET_ADMIN and /dev/net/tun, nothing more.
set -euo pipefail

: "${OGSTUN:=ogstun}" "${UE_POOL:?}" "${UE_GATEWAY:?}" "${UE_PREFIXLEN:?}" "${OGSTUN_MTU:=1400}" "${ENABLE_NAT:=true}"

if [ ! -c /dev/net/tun ]; then
    echo "upf-entrypoint: /dev/net/tun missing: add 'devices: [/dev/net/tun:/dev/net/tun]'" >&2
    exit 1
fi
if ! ip link show "$OGSTUN" >/dev/null 2>&1; then
    ip tuntap add name "$OGSTUN" mode tun
fi
ip addr replace "$UE_GATEWAY/$UE_PREFIXLEN" dev "$OGSTUN"
ip link set "$OGSTUN" mtu "$OGSTUN_MTU" up

if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 1 ]; then
    echo "upf-entrypoint: net.ipv4.ip_forward is 0: set it with 'sysctls:' in the compose file" >&2
    exit 1
fi
if [ "$ENABLE_NAT" = true ]; then
    # UE traffic leaving by any interface but ogstun is masqueraded (the DN sees the UPF's N6 address;
    # the tap sees UE addresses on N3 and on ogstun, before the NAT)
    iptables -t nat -C POSTROUTING -s "$UE_POOL" ! -o "$OGSTUN" -j MASQUERADE 2>/dev/null \
        || iptables -t nat -A POSTROUTING -s "$UE_POOL" ! -o "$OGSTUN" -j MASQUERADE
fi
echo "upf-entrypoint: $OGSTUN up ($UE_GATEWAY/$UE_PREFIXLEN, mtu $OGSTUN_MTU, nat $ENABLE_NAT)"
exec "$@"
