"""Shared helpers of the abuse scripts: TLS to a Tern server on loopback, server RSS."""
import hashlib
import socket
import ssl


def tls_connect(host, port, alpn=None, source=None, pin=None, timeout=10):
    """A TLS socket to host:port (optionally from a source address). The server's certificate
    is self-signed: it is checked against the pinned SHA-256 when one is given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection((host, port), timeout=timeout,
                                   source_address=(source, 0) if source else None)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    if pin:
        got = hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()
        if got != pin.replace(":", "").lower():
            s.close()
            raise ssl.SSLError("certificate hash mismatch")
    return s


def rss_mb(pid):
    """Resident set size of a process, MB (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid):
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))
