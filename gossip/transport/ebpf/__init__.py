"""The eBPF cloner transport: one ``sendto()``, the kernel fans the datagram out to up to 64 peers.

``transport.py`` is the transport (:func:`open_ebpf_transport`, :class:`EBPFTransport`: a UDP
transport with a cheaper ``send_many``), ``cloner.py`` the loaded TC program and its maps,
``_libbpf.py`` / ``_bcc_loader.py`` the two loaders, ``_bpfsys.py`` the BPF syscalls and
``_netlink.py`` the clsact qdisc, filters and marker routes. Docs: ``docs/ebpf.md``.
"""

from gossip.transport.ebpf.cloner import (
    DEFAULT_MARKER,
    MAX_PEERS,
    Cloner,
    ClonerStatistics,
    ProbeResult,
    default_object_path,
    default_source_path,
    probe,
)
from gossip.transport.ebpf.transport import EBPFTransport, open_ebpf_transport

__all__ = [
    "DEFAULT_MARKER",
    "MAX_PEERS",
    "Cloner",
    "ClonerStatistics",
    "EBPFTransport",
    "ProbeResult",
    "default_object_path",
    "default_source_path",
    "open_ebpf_transport",
    "probe",
]
