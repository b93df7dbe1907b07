"""``fedprompt admin ca``: the federation's certificate authority, on local files (no coordinator needed)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import add_command, add_format_flag, print_json

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_ca(args: argparse.Namespace) -> int:
    from fedprompt.crypto.errors import PkiError
    from fedprompt.crypto.pki import CertificateAuthority, cert_info, cert_pem, load_cert, write_key_and_csr

    if args.ca_cmd == "csr":
        key, csr = write_key_and_csr(args.identity, Path(args.out), args.san)
        print(f"private key {key} (keep it on this host)\ncertificate signing request {csr} (send it to the CA admin)")
        return 0
    if args.ca_cmd == "init":
        ca = CertificateAuthority.init(Path(args.dir), args.name, args.days)
        print(f"CA certificate {ca.ca_cert_path} (give it to every party)\nrevocation list {ca.crl_path} "
              f"(the coordinator's --crl)\nCA key {Path(args.dir) / 'ca.key'} (keep it offline)")
        return 0
    ca = CertificateAuthority(Path(args.dir))
    if args.ca_cmd == "issue":
        key, cert = ca.issue(args.identity, Path(args.out), args.san, args.days)
        print(f"certificate {cert} (serial {cert_info(load_cert(cert)).serial:x})\nprivate key {key}")
    elif args.ca_cmd == "sign":
        from fedprompt.files import read_bytes, writable

        csr_pem = read_bytes(args.csr, "certificate signing request")
        out = writable(args.out, "--out")
        try:
            signed = ca.sign(csr_pem, args.days)
        except PkiError as exc:
            raise PkiError(f"--csr {args.csr}: {exc}") from exc
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(cert_pem(signed))
        info = cert_info(signed)
        print(f"certificate {out} for {info.identity} (serial {info.serial:x}, valid until "
              f"{info.not_after:%Y-%m-%d})")
    elif args.ca_cmd == "revoke":
        if args.serial:
            try:
                serials = [int(args.serial, 16)]
            except ValueError as exc:
                raise PkiError(f"--serial {args.serial[:40]!r} is not a hexadecimal serial number") from exc
        elif args.revoke_cert:
            serials = [cert_info(load_cert(Path(args.revoke_cert))).serial]
        else:
            serials = ca.serials_of(args.identity)
        if not serials:
            raise PkiError(f"this CA issued no certificate to {args.identity}")
        added = ca.revoke(serials)
        print(f"revoked {', '.join(f'{s:x}' for s in added) or 'nothing new'}; {ca.crl_path} updated "
              "(a coordinator reading another copy needs this file)")
    elif args.ca_cmd == "list":
        from fedprompt.app.report import table

        revoked = ca.revoked()
        issued = [{"serial": row["serial"], "identity": row["identity"], "not_after": row["not_after"][:19],
                   "revoked": int(row["serial"], 16) in revoked} for row in ca.issued()]
        if args.format == "json":
            print_json(issued)
        elif not issued:
            print(f"this CA has issued no certificate yet (`fedprompt admin ca issue --dir {args.dir} ...`)")
        else:
            print(table(["serial", "identity", "not_after", "revoked"], [list(row.values()) for row in issued]))
    return 0


def register(asub: Subparsers) -> None:
    """``admin ca init|issue|csr|sign|revoke|list``, under ``admin``'s subcommands ``asub``."""
    ca = add_command(asub, "ca", "the federation's certificate authority (works on local files)",
                      "fedprompt admin ca issue --dir ca --identity admin:alice --out alice")
    casub = ca.add_subparsers(dest="ca_cmd", required=True)
    init = add_command(casub, "init", "create a CA: ca.key, ca.crt, an empty crl.pem", "fedprompt admin ca init --dir ca")
    init.add_argument("--dir", required=True, help="CA directory (keep ca.key offline)")
    init.add_argument("--name", default="fedprompt federation CA",
                      help="the CA certificate's common name (default 'fedprompt federation CA')")
    init.add_argument("--days", type=int, default=3650, help="validity of the CA certificate in days (default 3650)")
    issue = add_command(casub, "issue", "make a key and a certificate here (coordinator, admins; sites: use csr)",
                        "fedprompt admin ca issue --dir ca --identity coordinator:main --san coord.example.org "
                        "--san 10.0.0.5 --out coord")
    issue.add_argument("--dir", required=True, help="CA directory")
    csr = add_command(casub, "csr", "at a site: make a private key and a signing request for the CA admin",
                      "fedprompt admin ca csr --identity participant:hospital-a --out site")
    for p in (issue, csr):
        p.add_argument("--identity", required=True,
                       help="ROLE:NAME, e.g. participant:hospital-a, admin:alice, coordinator:main, "
                            "probe:k8s (health checks only)")
        p.add_argument("--san", action="append", default=[],
                       help="coordinator only: a DNS name or IP address it is reached by (repeat)")
        p.add_argument("--out", required=True, help="directory for the key (mode 0600) and certificate / CSR")
    sign = add_command(casub, "sign", "check and sign a CSR",
                       "fedprompt admin ca sign --dir ca --csr participant-hospital-a.csr "
                       "--out participant-hospital-a.crt")
    sign.add_argument("--dir", required=True, help="CA directory")
    sign.add_argument("--csr", required=True, help="the certificate signing request a site made with `admin ca csr`")
    sign.add_argument("--out", required=True, help="certificate file to write")
    for p in (issue, sign):
        p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    revoke = add_command(casub, "revoke", "revoke certificates; the coordinator refuses them on their next call",
                         "fedprompt admin ca revoke --dir ca --identity participant:hospital-a")
    revoke.add_argument("--dir", required=True, help="CA directory")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", help="serial number (hex, as printed by issue/sign/list)")
    which.add_argument("--cert", dest="revoke_cert", help="a certificate file")
    which.add_argument("--identity", help="every certificate issued to this identity")
    listing = add_command(casub, "list", "certificates issued and their revocation state",
                          "fedprompt admin ca list --dir ca --format json")
    listing.add_argument("--dir", required=True, help="CA directory")
    add_format_flag(listing)
    for command in casub.choices.values():
        command.set_defaults(fn=cmd_ca)
