# The DN's DNS server: dnsmasq on a pinned Alpine. The config is mounted by the compose file.
FROM alpine:3.20.3
RUN apk add --no-cache dnsmasq \
    && dnsmasq --version | head -n1
EXPOSE 53/udp 53/tcp
CMD ["dnsmasq", "--keep-in-foreground", "--conf-file=/etc/mec/dnsmasq.conf"]
