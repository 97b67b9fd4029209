"""CURVE encryption and client authentication for a server socket (front door, admin plane).

The server's key pair comes from a zmq.auth certificate file (``risk-engine keys`` makes
them); clients are allowed when their public key file is in ``authorized_keys_dir``. A client
with another key, or a plaintext client, never completes the handshake: ZeroMQ drops it
before any message reaches the engine.
"""
from __future__ import annotations

import os

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class CurveError(ValueError):
    """The CURVE set-up cannot be used; the message names the key and the path."""


_AUTHENTICATORS: dict[int, ThreadAuthenticator] = {}


def load_server_keys(secret_file: str) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as e:
        raise CurveError(f"curve.server_secret_file={secret_file!r}: {e}") from None
    if not secret:
        raise CurveError(f"curve.server_secret_file={secret_file!r}: holds no secret key")
    return public, secret


def configure_server(ctx: zmq.Context, sock: zmq.Socket, curve) -> None:
    """Make ``sock`` a CURVE server that admits only the keys in ``curve.authorized_keys_dir``.
    Call before bind."""
    if not os.path.isdir(curve.authorized_keys_dir):
        raise CurveError(f"curve.authorized_keys_dir={curve.authorized_keys_dir!r}: not a directory")
    public, secret = load_server_keys(curve.server_secret_file)
    auth = _AUTHENTICATORS.get(id(ctx))
    if auth is None:
        auth = _AUTHENTICATORS[id(ctx)] = ThreadAuthenticator(ctx)
        auth.start()
    auth.configure_curve(domain="*", location=curve.authorized_keys_dir)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def stop_authenticator(ctx: zmq.Context) -> None:
    auth = _AUTHENTICATORS.pop(id(ctx), None)
    if auth is not None:
        auth.stop()
