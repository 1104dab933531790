/* upf_tap._walk: the fast path of upf_tap/walk.py, compiled.
 *
 * The same three walks (pcap records, pcapng Enhanced Packet Blocks, batches of offsets)
 * and the same fast test, decision for decision: a frame that is Ethernet/IPv4/UDP/GTP-U
 * (one PDU Session Container)/IPv4 or IPv6/TCP-or-UDP on a flow direction the flow table
 * says needs no inspection is counted on its flow here; anything else goes to
 * Tap.feed_at, the full decoder in Python, exactly as the Python walk sends it. The
 * Python walk stays the reference (and the fallback where this module is not built);
 * tests/tap/test_accel.py checks that both give the same events and counters.
 *
 * Each walk gets its context from walk.py as one tuple (the flow table's dicts, the GTP-U
 * ports, the tap's bound methods) and keeps its progress in a list ``state`` =
 * [offset, packets, ts_ns, done, bytes] that it updates before every call into Python, so that
 * walk.py's ``finally`` sees where it stood whatever happens. ``done`` is 0 when the walk
 * stopped on something it does not handle (an arithmetic range it cannot hold in 64 bits):
 * walk.py then carries on from ``offset`` in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_PORTS 16
#define MAX_UDP_PORTS 64

typedef struct {
    PyObject *tcp_get;     /* the TCP flow table (dict) */
    PyObject *skip;        /* TCP directions done (dict) */
    PyObject *udp_skip;    /* UDP directions gone quiet (dict) */
    PyObject *lru_touch;   /* flows.lru.move_to_end */
    PyObject *feed_at;     /* tap.feed_at */
    PyObject *expire;      /* tap.expire */
    PyObject *tap;
    PyObject *tcp;         /* tap._tcp */
    PyObject *udp;         /* tap._udp */
    int nports;
    unsigned ports[MAX_PORTS];
    int count_flows;
    long long touch_ns;
    long long workers, me;
    long long next_expiry;
    /* UDP datagrams no dissector takes, counted here (walk.py: _quiet_udp_context); udp_get NULL: off */
    PyObject *udp_get;     /* the UDP flow table (dict) */
    int n_py_dports, n_quic_ports, n_py_sports;
    unsigned py_dports[MAX_UDP_PORTS], quic_ports[MAX_UDP_PORTS], py_sports[MAX_UDP_PORTS];
    long long udp_quiet;   /* UDP_QUIET_DATAGRAMS */
    long long dns_max_an, dns_max_ns, dns_max_ar; /* dns.SNIFF_MAX_* */
    PyObject *stats;       /* tap.stats (a Counter) */
} Ctx;

static PyObject *s_touch_at, *s_key0, *s_last_ns, *s_pkts, *s_octets, *s_next_expiry, *s_seq, *s_quiet, *s_state, *s_tcp_stray, *zero, *one;

static inline unsigned be16(const unsigned char *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint32_t le32(const unsigned char *p) {
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

static inline int is_gtpu_port(const Ctx *c, unsigned port) {
    for (int i = 0; i < c->nports; i++)
        if (c->ports[i] == port) return 1;
    return 0;
}

/* flows.owner, as the live fanout program chooses: the XOR of the addresses' last 32 bits
   (a and b are n bytes, big-endian), folded, modulo the workers */
static inline long long owner_of(const unsigned char *a, const unsigned char *b, int n, long long workers) {
    const unsigned char *p = a + n - 4, *q = b + n - 4;
    uint32_t x = ((uint32_t)(p[0] ^ q[0]) << 24) | ((uint32_t)(p[1] ^ q[1]) << 16) |
                 ((uint32_t)(p[2] ^ q[2]) << 8) | (uint32_t)(p[3] ^ q[3]);
    x ^= x >> 16;
    x ^= x >> 8;
    return (long long)(x % (unsigned long long)workers);
}

static int port_list(PyObject *tup, unsigned *out, int *n) {
    if (!PyTuple_Check(tup) || PyTuple_GET_SIZE(tup) > MAX_UDP_PORTS) {
        PyErr_SetString(PyExc_ValueError, "a port list for the compiled walk: a tuple of at most 64");
        return -1;
    }
    *n = (int)PyTuple_GET_SIZE(tup);
    for (int i = 0; i < *n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(tup, i));
        if (v == -1 && PyErr_Occurred()) return -1;
        out[i] = (unsigned)v;
    }
    return 0;
}

static inline int in_ports(const unsigned *ports, int n, unsigned port) {
    for (int i = 0; i < n; i++)
        if (ports[i] == port) return 1;
    return 0;
}

static int ctx_init(Ctx *c, PyObject *t) {
    /* (tcp_table, skip, udp_skip, lru_touch, feed_at, expire, tap, tcp, udp, gtpu_ports,
        count_flows, touch_ns, workers, me, next_expiry, quiet_udp, stats) with quiet_udp None or
        (udp_table, python_dports, quic_ports, python_sports, udp_quiet, dns sniff limits) */
    PyObject *ports, *quiet;
    int count_flows;
    if (!PyArg_ParseTuple(t, "O!O!O!OOOOOOO!pLLLLOO!", &PyDict_Type, &c->tcp_get, &PyDict_Type, &c->skip,
                          &PyDict_Type, &c->udp_skip, &c->lru_touch, &c->feed_at, &c->expire, &c->tap,
                          &c->tcp, &c->udp, &PyTuple_Type, &ports, &count_flows, &c->touch_ns, &c->workers,
                          &c->me, &c->next_expiry, &quiet, &PyDict_Type, &c->stats))
        return -1;
    c->udp_get = NULL;
    if (quiet != Py_None) {
        PyObject *pyd, *qp, *pys;
        if (!PyArg_ParseTuple(quiet, "O!OOOL(LLL)", &PyDict_Type, &c->udp_get, &pyd, &qp, &pys, &c->udp_quiet,
                              &c->dns_max_an, &c->dns_max_ns, &c->dns_max_ar) ||
            port_list(pyd, c->py_dports, &c->n_py_dports) < 0 || port_list(qp, c->quic_ports, &c->n_quic_ports) < 0 ||
            port_list(pys, c->py_sports, &c->n_py_sports) < 0)
            return -1;
    }
    c->count_flows = count_flows;
    Py_ssize_t n = PyTuple_GET_SIZE(ports);
    if (n > MAX_PORTS) {
        PyErr_SetString(PyExc_ValueError, "too many GTP-U ports for the compiled walk");
        return -1;
    }
    c->nports = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(ports, i));
        if (v == -1 && PyErr_Occurred()) return -1;
        c->ports[i] = (unsigned)v;
    }
    if (c->workers < 1) c->workers = 1;
    return 0;
}

/* list[idx] += add */
static int list_add(PyObject *lst, Py_ssize_t idx, long long add) {
    if (!PyList_Check(lst) || idx < 0 || idx >= PyList_GET_SIZE(lst)) {
        PyErr_SetString(PyExc_TypeError, "flow counters are not a list of two");
        return -1;
    }
    PyObject *old = PyList_GET_ITEM(lst, idx);
    PyObject *inc = PyLong_FromLongLong(add);
    if (inc == NULL) return -1;
    PyObject *sum = PyNumber_Add(old, inc);
    Py_DECREF(inc);
    if (sum == NULL) return -1;
    PyList_SetItem(lst, idx, sum); /* steals sum, drops old */
    return 0;
}

/* Count a packet on its flow, as walk.py does on a hit: LRU touch at most once per touch_ns,
   last_ns, and with ``count`` (--flows, on a skipped direction) the per-direction counters. */
static int on_hit(Ctx *c, PyObject *hit, long long ts_ns, long long seg_len, int count) {
    if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2) {
        PyErr_SetString(PyExc_TypeError, "flow table entry is not (flow, direction)");
        return -1;
    }
    PyObject *flow = PyTuple_GET_ITEM(hit, 0);
    Py_ssize_t idx = PyLong_AsSsize_t(PyTuple_GET_ITEM(hit, 1));
    if (idx == -1 && PyErr_Occurred()) return -1;
    Py_INCREF(flow); /* the callbacks below may drop the table's reference */
    int rc = -1;
    PyObject *ts = PyLong_FromLongLong(ts_ns);
    if (ts == NULL) goto out;
    PyObject *touch_at = PyObject_GetAttr(flow, s_touch_at);
    if (touch_at == NULL) goto out_ts;
    int later = PyObject_RichCompareBool(ts, touch_at, Py_GT);
    Py_DECREF(touch_at);
    if (later < 0) goto out_ts;
    if (later) {
        PyObject *key0 = PyObject_GetAttr(flow, s_key0);
        if (key0 == NULL) goto out_ts;
        PyObject *r = PyObject_CallOneArg(c->lru_touch, key0);
        Py_DECREF(key0);
        if (r == NULL) goto out_ts;
        Py_DECREF(r);
        PyObject *at = PyLong_FromLongLong(ts_ns + c->touch_ns);
        if (at == NULL) goto out_ts;
        int e = PyObject_SetAttr(flow, s_touch_at, at);
        Py_DECREF(at);
        if (e < 0) goto out_ts;
    }
    if (PyObject_SetAttr(flow, s_last_ns, ts) < 0) goto out_ts;
    if (count) {
        PyObject *pkts = PyObject_GetAttr(flow, s_pkts);
        if (pkts == NULL) goto out_ts;
        int e = list_add(pkts, idx, 1);
        Py_DECREF(pkts);
        if (e < 0) goto out_ts;
        PyObject *octets = PyObject_GetAttr(flow, s_octets);
        if (octets == NULL) goto out_ts;
        e = list_add(octets, idx, seg_len);
        Py_DECREF(octets);
        if (e < 0) goto out_ts;
    }
    rc = 0;
out_ts:
    Py_DECREF(ts);
out:
    Py_DECREF(flow);
    return rc;
}

static PyObject *lookup(PyObject *dict, const unsigned char *key, Py_ssize_t n, int *err) {
    PyObject *k = PyBytes_FromStringAndSize((const char *)key, n);
    if (k == NULL) {
        *err = 1;
        return NULL;
    }
    PyObject *hit = PyDict_GetItemWithError(dict, k); /* borrowed */
    Py_DECREF(k);
    if (hit == NULL && PyErr_Occurred()) *err = 1;
    return hit;
}

/* dns.looks_like_datagram, exactly: a DNS message by the header shape tshark's heuristic accepts */
static int dns_sniff(const Ctx *c, const unsigned char *p, long long n) {
    if (n <= 12) return 0;
    long long flags = be16(p + 2), qd = be16(p + 4), an = be16(p + 6), ns = be16(p + 8), ar = be16(p + 10);
    if (flags & 0x7800) return 0;
    if (flags & 0x8000) {
        if (qd > 1 || an > c->dns_max_an || ns > c->dns_max_ns) return 0;
    } else if (qd != 1 || an || ns) {
        return 0;
    }
    return ar <= c->dns_max_ar && qd + an > 0 && qd * 6 + (an + ns + ar) * 11 <= n - 12;
}

/* What pipeline.Tap._udp (through dissect.datagram_dissector) would make of a datagram on a
   known flow, where that is sure without Python: 1, no dissector takes it (not a port _udp or a
   dissector reads itself, not a long header QUIC's claims_datagram might take on its ports,
   neither sniffer taking it: DNS's test exactly, QUIC's first test, a long header); 2, the DNS
   sniffer takes it and it is a response (dns reads it and finds no query); 0, _udp's to decide. */
static int udp_kind(const Ctx *c, unsigned sport, unsigned dport, const unsigned char *p, long long n) {
    if (in_ports(c->py_dports, c->n_py_dports, dport) || in_ports(c->py_sports, c->n_py_sports, sport)) return 0;
    if (n >= 7 && (p[0] & 0x80) && in_ports(c->quic_ports, c->n_quic_ports, dport)) return 0;
    if (dns_sniff(c, p, n)) return (p[2] & 0x80) ? 2 : 0;
    if (n >= 7 && (p[0] & 0xC0) == 0xC0) return 0;
    return 1;
}

/* A datagram of a known UDP flow that udp_kind is sure of, its direction not yet quiet: what
   _udp does with it. The flow's counters as _flow_for keeps them (on_hit, counting); no
   dissector: its quiet count raised, and at udp_quiet the direction joins udp_skip
   (FlowTable.skip_direction); a DNS response: the count back to 0. 1: done; 0: for _udp;
   -1: an error. */
static int quiet_datagram(Ctx *c, const unsigned char *key, Py_ssize_t klen, const unsigned char *udp,
                          long long ulen, long long ts_ns) {
    if (c->udp_get == NULL || ulen < 8) return 0;
    int kind = udp_kind(c, be16(udp), be16(udp + 2), udp + 8, ulen - 8);
    if (!kind) return 0;
    PyObject *k = PyBytes_FromStringAndSize((const char *)key, klen);
    if (k == NULL) return -1;
    int rc = -1;
    PyObject *q = NULL, *hit = PyDict_GetItemWithError(c->udp_get, k); /* borrowed */
    if (hit == NULL) {
        rc = PyErr_Occurred() ? -1 : 0; /* a new flow: _udp opens it */
        goto out_k;
    }
    Py_INCREF(hit);
    if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2) {
        PyErr_SetString(PyExc_TypeError, "flow table entry is not (flow, direction)");
        goto out_hit;
    }
    PyObject *flow = PyTuple_GET_ITEM(hit, 0);
    Py_ssize_t idx = PyLong_AsSsize_t(PyTuple_GET_ITEM(hit, 1));
    if (idx == -1 && PyErr_Occurred()) goto out_hit;
    if ((q = PyObject_GetAttr(flow, s_quiet)) == NULL) goto out_hit;
    if (!PyList_Check(q) || idx < 0 || idx >= PyList_GET_SIZE(q)) {
        PyErr_SetString(PyExc_TypeError, "flow.quiet is not a list of two");
        goto out_hit;
    }
    long long was = PyLong_AsLongLong(PyList_GET_ITEM(q, idx));
    if (was == -1 && PyErr_Occurred()) goto out_hit;
    if (was >= c->udp_quiet) { /* quiet but not in udp_skip: _udp's own case */
        rc = 0;
        goto out_hit;
    }
    if (kind == 2) { /* a direction whose dissector state is False (done) is _udp's */
        PyObject *st = PyObject_GetAttr(flow, s_state);
        if (st == NULL) goto out_hit;
        int open = PyList_Check(st) && idx < PyList_GET_SIZE(st) && PyList_GET_ITEM(st, idx) != Py_False;
        Py_DECREF(st);
        if (!open) {
            rc = 0;
            goto out_hit;
        }
    }
    if (on_hit(c, hit, ts_ns, ulen, 1) < 0) goto out_hit; /* counted always, as _flow_for does */
    if (kind == 2) {
        Py_INCREF(zero);
        if (PyList_SetItem(q, idx, zero) < 0) goto out_hit; /* steals the reference */
    } else {
        if (list_add(q, idx, 1) < 0) goto out_hit;
        if (was + 1 >= c->udp_quiet && PyDict_SetItem(c->udp_skip, k, hit) < 0) goto out_hit;
    }
    rc = 1;
out_hit:
    Py_XDECREF(q);
    Py_DECREF(hit);
out_k:
    Py_DECREF(k);
    return rc;
}

/* A bare ACK (no SYN, FIN, RST or payload) of no known flow: Tap._tcp only counts it
   (tcp.stray: the last ACK after a close, a capture that starts mid-flow). 1: counted; -1: error. */
static int stray(Ctx *c) {
    PyObject *was = PyDict_GetItemWithError(c->stats, s_tcp_stray); /* borrowed */
    if (was == NULL && PyErr_Occurred()) return -1;
    PyObject *now = was == NULL ? PyLong_FromLong(1) : PyNumber_Add(was, one);
    if (now == NULL) return -1;
    int e = PyDict_SetItem(c->stats, s_tcp_stray, now);
    Py_DECREF(now);
    return e < 0 ? -1 : 1;
}

/* The fast test on one Ethernet frame of flen >= 98 bytes. 1: handled here (counted on its
   flow, or another worker's); 0: for the full decoder; 6 or 17 (*v6 set): the common N3 shape
   with TCP or UDP inside, for the tap's transport layer straight away (see to_l4); -1: a
   Python error. */
static int fast_one(Ctx *c, const unsigned char *f, long long flen, long long ts_ns, int *v6) {
    uint32_t eth_ip = be32(f + 12);
    unsigned otot = be16(f + 16);
    uint32_t frag_proto = be32(f + 20);
    unsigned sport = be16(f + 34), dport = be16(f + 36);
    uint32_t gtp = be32(f + 42);
    unsigned ext = be16(f + 53), ext_ip = be16(f + 57);
    if (!(eth_ip >= 0x08004500u && eth_ip <= 0x080045FFu && flen - (long long)otot == 14 &&
          (frag_proto & 0x3FFF00FFu) == 17 && (unsigned long long)gtp == 0x34FF0000ULL - 50 + (unsigned long long)flen &&
          ext == 0x8501 && (is_gtpu_port(c, sport) || is_gtpu_port(c, dport))))
        return 0;
    PyObject *hit = NULL;
    int err = 0;
    long long seg_len = 0;
    if (ext_ip == 0x0045) { /* inner IPv4 without options */
        const unsigned char *key = f + 70;
        if (c->workers > 1 && owner_of(key, key + 4, 4, c->workers) != c->me) return 1;
        long long itot = be16(f + 60);
        if (flen - itot == 58) {
            uint32_t iproto = be32(f + 64) & 0x3FFF00FFu;
            unsigned tcp = be16(f + 90);
            if (iproto == 6) {
                long long tcp_end = 20 + (long long)(tcp >> 12) * 4;
                if (!(tcp & 0x07) && tcp >= 0x5000 && itot >= tcp_end) {
                    hit = lookup(itot == tcp_end ? c->tcp_get : c->skip, key, 12, &err);
                    if (hit == NULL && !err && itot == tcp_end) return stray(c);
                }
            } else if (iproto == 17) {
                hit = lookup(c->udp_skip, key, 12, &err);
                if (hit == NULL && !err) {
                    int k = quiet_datagram(c, key, 12, f + 78, itot - 20, ts_ns);
                    if (k) return k;
                }
            }
        }
        seg_len = itot - 20;
    } else if ((ext_ip >> 4) == 6 && flen >= 118) { /* inner IPv6, TCP or UDP right after its header */
        long long plen = be16(f + 62);
        unsigned nh = f[64];
        const unsigned char *key = f + 66;
        unsigned tcp = be16(f + 110);
        long long tcp_end = (long long)(tcp >> 12) * 4;
        if (nh == 6 && flen - plen == 98 && !(tcp & 0x07) && tcp >= 0x5000 && plen >= tcp_end) {
            if (c->workers > 1 && owner_of(key, key + 16, 16, c->workers) != c->me) return 1;
            hit = lookup(plen == tcp_end ? c->tcp_get : c->skip, key, 36, &err);
            seg_len = plen;
            if (hit == NULL && !err && plen == tcp_end) return stray(c);
        } else if (nh == 17 && flen - plen == 98) { /* UDP in IPv6: a direction gone quiet */
            if (c->workers > 1 && owner_of(key, key + 16, 16, c->workers) != c->me) return 1;
            hit = lookup(c->udp_skip, key, 36, &err);
            seg_len = plen;
            if (hit == NULL && !err) {
                int k = quiet_datagram(c, key, 36, f + 98, plen, ts_ns);
                if (k) return k;
            }
        }
    }
    if (err) return -1;
    if (hit != NULL) return on_hit(c, hit, ts_ns, seg_len, c->count_flows) < 0 ? -1 : 1;
    /* Not skippable, but of the shape whose outer layers (outer IPv4, UDP, GTP-U with one PDU
       Session Container) decode without a drop or a count in Tap.feed_at: when the inner header
       is whole and unfragmented with TCP or UDP after it, the tap's _tcp/_udp take it as
       _user_ip would hand it over. Another worker's packet is left alone as _user_ip leaves it. */
    if (ext_ip == 0x0045) {
        uint32_t ifp = be32(f + 64);
        unsigned proto = ifp & 0xFF;
        if (flen - (long long)be16(f + 60) == 58 && !(ifp & 0x3FFF0000u) && (proto == 6 || proto == 17)) {
            *v6 = 0;
            return (int)proto;
        }
    } else if ((ext_ip >> 4) == 6) {
        unsigned nh = f[64];
        if (flen - (long long)be16(f + 62) == 98 && (nh == 6 || nh == 17)) {
            if (c->workers > 1 && owner_of(f + 66, f + 82, 16, c->workers) != c->me) return 1;
            *v6 = 1;
            return (int)nh;
        }
    }
    return 0;
}

/* The last tunnel tuple made, by its fields: consecutive packets of one N3 link mostly share one
   (an immutable tuple of equal content, so sharing it is as good as a new one) */
static PyObject *g_tun;
static unsigned char g_tun_key[14];

static PyObject *tunnel_of(const unsigned char *f) {
    unsigned char k[14];
    memcpy(k, f + 26, 8);     /* outer source and destination */
    memcpy(k + 8, f + 46, 4); /* TEID */
    k[12] = f[56] & 0x3F;     /* QFI */
    k[13] = f[55] >> 4;       /* PDU type */
    if (g_tun != NULL && memcmp(k, g_tun_key, sizeof k) == 0) {
        Py_INCREF(g_tun);
        return g_tun;
    }
    PyObject *osrc = PyBytes_FromStringAndSize((const char *)f + 26, 4);
    PyObject *odst = osrc ? PyBytes_FromStringAndSize((const char *)f + 30, 4) : NULL;
    PyObject *tun = odst ? Py_BuildValue("(OOkii)", osrc, odst, (unsigned long)be32(f + 46), k[12], k[13]) : NULL;
    Py_XDECREF(osrc);
    Py_XDECREF(odst);
    if (tun == NULL) return NULL;
    Py_XSETREF(g_tun, tun);
    memcpy(g_tun_key, k, sizeof k);
    Py_INCREF(tun);
    return tun;
}

/* Hand a frame of the common N3 shape to tap._tcp / tap._udp with what the outer layers would
   have found: (data, l4, end, src, dst, (outer src, outer dst, TEID, QFI, PDU type)). */
static int to_l4(Ctx *c, long long ts_ns, const unsigned char *f, long long flen, int v6, int proto) {
    int rc = -1;
    PyObject *frame = NULL, *src = NULL, *dst = NULL, *tun = NULL, *ts = NULL, *l4o = NULL, *endo = NULL, *r;
    if (PyObject_SetAttr(c->tap, s_seq, zero) < 0) return -1; /* as feed_at starts a packet */
    if ((ts = PyLong_FromLongLong(ts_ns)) == NULL) goto out;
    if (PyObject_SetAttr(c->tap, s_last_ns, ts) < 0) goto out;
    if ((frame = PyBytes_FromStringAndSize((const char *)f, flen)) == NULL) goto out;
    int alen = v6 ? 16 : 4, at = v6 ? 66 : 70, l4 = v6 ? 98 : 78;
    if ((src = PyBytes_FromStringAndSize((const char *)f + at, alen)) == NULL) goto out;
    if ((dst = PyBytes_FromStringAndSize((const char *)f + at + alen, alen)) == NULL) goto out;
    if ((tun = tunnel_of(f)) == NULL) goto out;
    if ((l4o = PyLong_FromLong(l4)) == NULL || (endo = PyLong_FromLongLong(flen)) == NULL) goto out;
    PyObject *argv[7] = {ts, frame, l4o, endo, src, dst, tun};
    r = PyObject_Vectorcall(proto == 6 ? c->tcp : c->udp, argv, 7, NULL);
    if (r == NULL) goto out;
    Py_DECREF(r);
    rc = 0;
out:
    Py_XDECREF(ts);
    Py_XDECREF(frame);
    Py_XDECREF(src);
    Py_XDECREF(dst);
    Py_XDECREF(tun);
    Py_XDECREF(l4o);
    Py_XDECREF(endo);
    return rc;
}

static long long g_bytes; /* captured bytes walked (pcapng), reported in state[4] */

static int set_state(PyObject *state, long long off, long long npk, long long ts_ns, int done) {
    long long v[5] = {off, npk, ts_ns, done, g_bytes};
    for (int i = 0; i < 5; i++) {
        PyObject *o = PyLong_FromLongLong(v[i]);
        if (o == NULL) return -1;
        if (PyList_SetItem(state, i, o) < 0) return -1;
    }
    return 0;
}

static int do_expire(Ctx *c, long long ts_ns) {
    PyObject *r = PyObject_CallFunction(c->expire, "L", ts_ns);
    if (r == NULL) return -1;
    Py_DECREF(r);
    PyObject *ne = PyObject_GetAttr(c->tap, s_next_expiry);
    if (ne == NULL) return -1;
    c->next_expiry = PyLong_AsLongLong(ne);
    Py_DECREF(ne);
    if (c->next_expiry == -1 && PyErr_Occurred()) return -1;
    return 0;
}

static int do_slow(Ctx *c, long long ts_ns, long linktype, PyObject *frame, Py_ssize_t n) {
    PyObject *ts = PyLong_FromLongLong(ts_ns);
    if (ts == NULL) return -1;
    int e = PyObject_SetAttr(c->tap, s_last_ns, ts);
    if (e < 0) {
        Py_DECREF(ts);
        return -1;
    }
    PyObject *r = PyObject_CallFunction(c->feed_at, "OlOin", ts, linktype, frame, 0, n);
    Py_DECREF(ts);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static int check_state(PyObject *state) {
    if (!PyList_Check(state) || PyList_GET_SIZE(state) != 5) {
        PyErr_SetString(PyExc_TypeError, "state must be a list of five");
        return -1;
    }
    g_bytes = 0;
    return 0;
}

/* walk_pcap(ctx, state, buf, off, big_endian, linktype, mul, limit, min_fast, ts_ns) */
static PyObject *walk_pcap(PyObject *self, PyObject *args) {
    PyObject *ctxt, *state, *bufobj;
    long long off, mul, limit, min_fast, ts_ns;
    int big;
    long linktype;
    if (!PyArg_ParseTuple(args, "O!O!OLplLLLL", &PyTuple_Type, &ctxt, &PyList_Type, &state, &bufobj,
                          &off, &big, &linktype, &mul, &limit, &min_fast, &ts_ns))
        return NULL;
    Ctx c;
    if (check_state(state) < 0 || ctx_init(&c, ctxt) < 0) return NULL;
    Py_buffer view; /* bytes, or a file mapped whole (capture.pcapfile): held until the walk returns */
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    long long n = (long long)view.len, npk = 0;
    long long sec0 = -1, base = 0;
    int done = 1;
    while (1) {
        if (n - off < 16) break; /* fewer than 16 bytes left in the chunk */
        const unsigned char *r = buf + off;
        long long sec = big ? be32(r) : le32(r);
        long long frac = big ? be32(r + 4) : le32(r + 4);
        long long incl = big ? be32(r + 8) : le32(r + 8);
        long long end = off + 16 + incl;
        if (end > n || incl > limit) break;
        long long fm, ts;
        if (sec != sec0) {
            long long b;
            if (__builtin_mul_overflow(sec, 1000000000LL, &b)) { done = 0; break; }
            sec0 = sec;
            base = b;
        }
        if (__builtin_mul_overflow(frac, mul, &fm) || __builtin_add_overflow(base, fm, &ts)) { done = 0; break; }
        npk++;
        ts_ns = ts;
        if (ts_ns >= c.next_expiry) {
            if (do_expire(&c, ts_ns) < 0) goto fail_state; /* the state is written only if this fails */
        }
        if (incl >= min_fast) {
            int v6 = 0, k = fast_one(&c, r + 16, incl, ts_ns, &v6);
            if (k < 0) goto fail_state;
            if (k > 1) {
                if (to_l4(&c, ts_ns, r + 16, incl, v6, k) < 0) goto fail_state;
            }
            if (k) {
                off = end;
                continue;
            }
        }
        PyObject *frame = PyBytes_FromStringAndSize((const char *)r + 16, incl);
        if (frame == NULL) goto fail_state;
        int e = do_slow(&c, ts_ns, linktype, frame, (Py_ssize_t)incl);
        Py_DECREF(frame);
        if (e < 0) goto fail_state;
        off = end;
    }
    PyBuffer_Release(&view);
    if (set_state(state, off, npk, ts_ns, done) < 0) return NULL;
    Py_RETURN_NONE;
fail_state:
    {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        set_state(state, off, npk, ts_ns, 0);
        PyErr_Restore(et, ev, tb);
    }
    PyBuffer_Release(&view);
    return NULL;
}

/* walk_pcapng(ctx, state, buf, off, ifaces, n6, ts_ns): little-endian EPBs (PcapngRun) */
static PyObject *walk_pcapng(PyObject *self, PyObject *args) {
    PyObject *ctxt, *state, *bufobj, *ifaces;
    long long off, ts_ns;
    int n6;
    if (!PyArg_ParseTuple(args, "O!O!OLO!pL", &PyTuple_Type, &ctxt, &PyList_Type, &state, &bufobj,
                          &off, &PyList_Type, &ifaces, &n6, &ts_ns))
        return NULL;
    Ctx c;
    if (check_state(state) < 0 || ctx_init(&c, ctxt) < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_INCREF(ifaces);
    const unsigned char *buf = (const unsigned char *)view.buf;
    long long n = (long long)view.len, npk = 0;
    long long cur = -1, linktype = 0, mul = 0, tsoff = 0, min_fast = INT64_MAX;
    long long th0 = -1, hi = 0;
    int done = 1;
    while (1) {
        if (n - off < 28) break; /* fewer than 28 bytes left in the chunk */
        const unsigned char *b = buf + off;
        long long btype = le32(b), blen = le32(b + 4), ifid = le32(b + 8);
        long long th = le32(b + 12), tl = le32(b + 16), cap = le32(b + 20);
        long long end = off + blen;
        if (btype != 6 || end > n || (blen & 3) || blen - cap < 32 || (long long)le32(buf + end - 4) != blen) break;
        if (ifid != cur) {
            if (ifid >= PyList_GET_SIZE(ifaces)) break;
            PyObject *ifc = PyList_GET_ITEM(ifaces, ifid);
            long long lt, m, dv, to, snap;
            if (!PyArg_ParseTuple(ifc, "LLLLL", &lt, &m, &dv, &to, &snap)) {
                PyErr_Clear();
                done = 0; /* a number beyond 64 bits: the Python walk takes it from here */
                break;
            }
            if (dv != 1) break; /* a resolution to divide by */
            linktype = lt;
            mul = m;
            tsoff = to;
            th0 = -1;
            min_fast = (!n6 && linktype == 1) ? 98 : INT64_MAX;
            cur = ifid;
        }
        if (th != th0) {
            long long h;
            if (__builtin_mul_overflow(th, 1LL << 32, &h) || __builtin_mul_overflow(h, mul, &h) ||
                __builtin_add_overflow(h, tsoff, &h)) { done = 0; break; }
            th0 = th;
            hi = h;
        }
        long long tm, ts;
        if (__builtin_mul_overflow(tl, mul, &tm) || __builtin_add_overflow(hi, tm, &ts)) { done = 0; break; }
        npk++;
        g_bytes += cap;
        ts_ns = ts;
        if (ts_ns >= c.next_expiry) {
            if (do_expire(&c, ts_ns) < 0) goto fail_state; /* the state is written only if this fails */
        }
        if (cap >= min_fast) {
            int v6 = 0, k = fast_one(&c, b + 28, cap, ts_ns, &v6);
            if (k < 0) goto fail_state;
            if (k > 1) {
                if (to_l4(&c, ts_ns, b + 28, cap, v6, k) < 0) goto fail_state;
            }
            if (k) {
                off = end;
                continue;
            }
        }
        PyObject *frame = PyBytes_FromStringAndSize((const char *)b + 28, cap);
        if (frame == NULL) goto fail_state;
        int e = do_slow(&c, ts_ns, (long)linktype, frame, (Py_ssize_t)cap);
        Py_DECREF(frame);
        if (e < 0) goto fail_state;
        off = end;
    }
    PyBuffer_Release(&view);
    Py_DECREF(ifaces);
    if (set_state(state, off, npk, ts_ns, done) < 0) return NULL;
    Py_RETURN_NONE;
fail_state:
    {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        set_state(state, off, npk, ts_ns, 0);
        PyErr_Restore(et, ev, tb);
    }
    PyBuffer_Release(&view);
    Py_DECREF(ifaces);
    return NULL;
}

/* walk_batch(ctx, state, buf, recs, use_fast, ts_ns): recs = [ts_ns, linktype, start, end, ...];
   state[0] is the index of the next packet in recs */
static PyObject *walk_batch(PyObject *self, PyObject *args) {
    PyObject *ctxt, *state, *bufobj, *recs;
    int use_fast;
    long long ts_ns;
    if (!PyArg_ParseTuple(args, "O!O!O!O!pL", &PyTuple_Type, &ctxt, &PyList_Type, &state, &PyBytes_Type, &bufobj,
                          &PyList_Type, &recs, &use_fast, &ts_ns))
        return NULL;
    Ctx c;
    if (check_state(state) < 0 || ctx_init(&c, ctxt) < 0) return NULL;
    PyObject *first = PyList_GET_ITEM(state, 0);
    long long i = PyLong_AsLongLong(first);
    if (i == -1 && PyErr_Occurred()) return NULL;
    Py_INCREF(bufobj);
    Py_INCREF(recs);
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(bufobj);
    long long blen = PyBytes_GET_SIZE(bufobj);
    long long nrec = PyList_GET_SIZE(recs) / 4;
    int done = 1;
    for (; i < nrec; i++) {
        long long v[4];
        for (int j = 0; j < 4; j++) {
            v[j] = PyLong_AsLongLong(PyList_GET_ITEM(recs, 4 * i + j));
            if (v[j] == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                done = 0; /* beyond 64 bits: the Python walk takes it from here */
                goto stop;
            }
        }
        long long start = v[2], end = v[3], flen = end - start;
        if (start < 0 || end > blen || flen < 0) { done = 0; goto stop; } /* Python would slice; let it */
        ts_ns = v[0];
        if (ts_ns >= c.next_expiry) {
            if (do_expire(&c, ts_ns) < 0) goto fail_state;
        }
        if (use_fast && v[1] == 1 && flen >= 98) {
            int v6 = 0, k = fast_one(&c, buf + start, flen, ts_ns, &v6);
            if (k < 0) goto fail_state;
            if (k > 1) {
                if (to_l4(&c, ts_ns, buf + start, flen, v6, k) < 0) goto fail_state;
            }
            if (k) continue;
        }
        PyObject *frame;
        if (start == 0 && end == blen) {
            frame = bufobj;
            Py_INCREF(frame);
        } else {
            frame = PyBytes_FromStringAndSize((const char *)buf + start, flen);
            if (frame == NULL) goto fail_state;
        }
        int e = do_slow(&c, ts_ns, (long)v[1], frame, (Py_ssize_t)flen);
        Py_DECREF(frame);
        if (e < 0) goto fail_state;
    }
stop:
    Py_DECREF(bufobj);
    Py_DECREF(recs);
    if (set_state(state, i, 0, ts_ns, done) < 0) return NULL;
    Py_RETURN_NONE;
fail_state:
    {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        set_state(state, i, 0, ts_ns, 0);
        PyErr_Restore(et, ev, tb);
    }
    Py_DECREF(bufobj);
    Py_DECREF(recs);
    return NULL;
}

static PyMethodDef methods[] = {
    {"walk_pcap", walk_pcap, METH_VARARGS, "The pcap record walk of upf_tap.walk.walk_pcap, compiled."},
    {"walk_pcapng", walk_pcapng, METH_VARARGS, "The EPB walk of upf_tap.walk.walk_pcapng, compiled."},
    {"walk_batch", walk_batch, METH_VARARGS, "The batch walk of upf_tap.walk.walk_batch, compiled."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "upf_tap._walk",
                                    "The tap's fast path, compiled (see upf_tap/walk.py).", -1, methods};

PyMODINIT_FUNC PyInit__walk(void) {
    s_touch_at = PyUnicode_InternFromString("touch_at");
    s_key0 = PyUnicode_InternFromString("key0");
    s_last_ns = PyUnicode_InternFromString("last_ns");
    s_pkts = PyUnicode_InternFromString("pkts");
    s_octets = PyUnicode_InternFromString("octets");
    s_next_expiry = PyUnicode_InternFromString("next_expiry");
    s_seq = PyUnicode_InternFromString("_seq");
    s_quiet = PyUnicode_InternFromString("quiet");
    s_state = PyUnicode_InternFromString("state");
    s_tcp_stray = PyUnicode_InternFromString("tcp.stray");
    one = PyLong_FromLong(1);
    zero = PyLong_FromLong(0);
    if (!s_touch_at || !s_key0 || !s_last_ns || !s_pkts || !s_octets || !s_next_expiry || !s_seq || !s_quiet || !s_state || !s_tcp_stray || !zero || !one) return NULL;
    return PyModule_Create(&module);
}
