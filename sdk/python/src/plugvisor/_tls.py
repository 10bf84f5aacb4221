"""`server_context`: a worker serving TLS itself on TCP (remote use), from PEM files, with the
standard library's `ssl`; optionally requiring client certificates signed by a CA (mutual TLS).

The Rust runtime's `worker/src/tls.rs` with the same flags and messages: TLS 1.2 or 1.3, ALPN
``http/1.1``, and a certificate, key or CA that cannot be used refused at start, before the
handshake line, naming the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    import ssl

__all__ = ["TlsError", "server_context", "HANDSHAKE_TIMEOUT"]

#: Seconds a client may take to complete the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0


class TlsError(Exception):
    """The certificate, key or client CA cannot be loaded or do not fit together (exit 1)."""

    def __str__(self) -> str:
        return f"TLS setup: {self.args[0]}"


def server_context(cert: str, key: str, client_ca: Optional[str] = None) -> "ssl.SSLContext":
    """A server context with the PEM certificate chain `cert` (leaf first) and its PEM private
    key `key`; with `client_ca`, clients must present a certificate that CA signed.

    Raises:
        TlsError: naming the file that cannot be read or parsed, or a key that does not match
            the certificate.
    """
    import ssl  # only for a TLS worker: importing it loads OpenSSL, which start-up would pay

    _pem_blocks(cert, "CERTIFICATE", lambda e: f"certificates in {cert}: {e}")
    _pem_blocks(key, "PRIVATE KEY", lambda e: f"no private key in {key}: {e}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TlsError(f"{cert} and its key: {_reason(e)}") from None
    if client_ca is not None:
        _pem_blocks(client_ca, "CERTIFICATE", lambda e: f"certificates in {client_ca}: {e}")
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise TlsError(f"client CA {client_ca}: {_reason(e)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _pem_blocks(path: str, label: str, message: Callable[[str], str]) -> None:
    """Checks that the file at `path` can be read and holds a PEM block whose label ends with
    `label` (``CERTIFICATE``; ``PRIVATE KEY`` also matches ``EC PRIVATE KEY``)."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise TlsError(message(e.strerror or str(e))) from None
    if f"{label}-----".encode() not in text or b"-----BEGIN " not in text:
        what = "CERTIFICATE block" if label == "CERTIFICATE" else "PRIVATE KEY block"
        raise TlsError(message(f"no {what}"))


def _reason(e: BaseException) -> str:
    """An OpenSSL error without its C source location: ``key values mismatch``."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    return str(e)
