"""Where the tap's frames come from: capture files and live interfaces.

    common.py    CaptureError (the one error of every capture source) and the link types
    pcapfile.py  pcap / pcapng files (plain or gzip) as (timestamp_ns, linktype, frame)
    ring.py      an AF_PACKET socket with a TPACKET_V3 memory-mapped receive ring
    bpf.py       classic BPF: the kernel capture filters and the N3 fanout selector
    fanout.py    PACKET_FANOUT: one interface's packets spread over N sockets, flow-stable
    netns.py     open capture sockets inside another network namespace

The live service that runs these (workers, detector sender, metrics) is ``upf_tap.live``.
"""

from upf_tap.capture.common import CaptureError

__all__ = ["CaptureError"]
