"""``stm-live keys``: make CURVE key pairs for the daemon and its clients."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

from ..errors import ConfigError

HELP = "make ZeroMQ CURVE key pairs for the daemon (server) and its clients (bridges, status, simulate)"
DESCRIPTION = (
    "Write NAME.key (public key: give it away) and NAME.key_secret (public and secret key, readable by its "
    "owner only: keep it) for each NAME, in the ZeroMQ certificate format. The daemon's pair goes in "
    "security.server_secret_key; each client's public NAME.key goes into the daemon's security.allowed_clients "
    "folder (--allow does that), and the client uses security.client_secret_key plus the daemon's public "
    "server.key as security.server_public_key. See docs/daemon.md, 'Keys and remote bridges'."
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="key pair names, e.g. server bridge-pc status (letters, digits, _ . -)")
    parser.add_argument("--dir", type=Path, default=Path("keys"), metavar="DIR",
                        help="folder for the key files (created; default: ./keys)")
    parser.add_argument("--allow", type=Path, metavar="DIR",
                        help="also copy each NAME.key into this folder of allowed clients (security.allowed_clients)")
    parser.add_argument("--force", action="store_true", help="replace key files that exist (old keys stop working)")


def run(args: argparse.Namespace) -> int:
    import zmq.auth

    bad = [n for n in args.names if not _NAME.match(n)]
    if bad:
        raise ConfigError(f"key names must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or "
                          f"digit); got {', '.join(repr(n) for n in bad)}")
    if len(set(args.names)) != len(args.names):
        raise ConfigError("each key name once, please")
    folders = [args.dir] + ([args.allow] if args.allow is not None else [])
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{folder}: cannot create the folder: {exc.strerror or exc}") from None
    targets = [args.dir / f"{n}{suffix}" for n in args.names for suffix in (".key", ".key_secret")]
    if args.allow is not None:
        targets += [args.allow / f"{n}.key" for n in args.names]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.force:
        raise ConfigError(f"{', '.join(existing)} exist(s); use --force to replace them (the old keys then stop "
                          "working)")
    for name in args.names:
        # zmq.auth writes with the umask's permissions: the secret must never exist readable by others.
        umask = os.umask(0o077)
        try:
            public, secret = (Path(p) for p in zmq.auth.create_certificates(args.dir, name))
        except OSError as exc:
            raise ConfigError(f"{args.dir / name}: cannot write the key files: {exc.strerror or exc}") from None
        finally:
            os.umask(umask)
        try:
            public.chmod(0o644)
            if args.allow is not None:
                shutil.copyfile(public, args.allow / public.name)
        except OSError as exc:
            raise ConfigError(f"{args.dir / name}: cannot write the key files: {exc.strerror or exc}") from None
        print(f"{name}: public {public}  secret {secret}" + (f"  allowed in {args.allow}" if args.allow else ""))
    return 0
