"""The sim lab: a 5G user plane emulated in Linux network namespaces (see docs/sim.md).

UE namespaces with TUN devices, a gNB that speaks GTP-U on N3, an SMF and a UPF that
speak PFCP on N4, and a DN with the main application, DNS and MQTT. Real packets on
real veth links, so the tap sees what it would see at an Open5GS UPF.
"""
