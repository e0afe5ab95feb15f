"""The cluster's certificates, made with openssl: one CA, serving certificates, client certificates.

Every client authenticates with a certificate of its own (kubelets as ``system:node:<name>`` in
``system:nodes``, kube-proxy as ``system:kube-proxy``, the apiserver to kubelets as a ``system:masters`` client);
only the admin kubeconfig uses a token (``ADMIN_TOKEN``), as the tests always have.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ADMIN_TOKEN = "longalign-admin-token"  # a throwaway credential of a throwaway cluster


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


class PKI:
    """A certificate authority in ``directory`` (made on construction) and the certificates it signs."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = KeyPair(self.dir / "ca.crt", self.dir / "ca.key")
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=longalign-local-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        )

    def serving(self, name: str, ips: Sequence[str], dns: Sequence[str] = ()) -> KeyPair:
        """A server certificate for these IP addresses and DNS names."""
        sans = ",".join([*(f"IP:{ip}" for ip in ips), *(f"DNS:{d}" for d in dns)])
        return self._sign(name, f"/CN={name}", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")

    def client(self, name: str, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate authenticating as ``user`` (CN) in ``groups`` (O)."""
        subject = f"/CN={user}" + "".join(f"/O={g}" for g in groups)
        return self._sign(name, subject, "extendedKeyUsage=clientAuth\n")

    def service_account_keys(self) -> KeyPair:
        """The key pair that signs ServiceAccount tokens (``cert`` is the public key)."""
        pair = KeyPair(self.dir / "sa.pub", self.dir / "sa.key")
        self._openssl("genrsa", "-out", "sa.key", "2048")
        self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        return pair

    def kubeconfig(self, path: Path, server: str, *, pair: KeyPair | None = None, token: str | None = None) -> Path:
        """Write a kubeconfig for ``server`` that trusts this CA and authenticates with ``pair`` or ``token``."""
        if token:
            user = {"token": token}
        elif pair is not None:
            user = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
        else:
            raise ValueError("a kubeconfig needs a key pair or a token")
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "longalign-local",
                    "clusters": [
                        {
                            "name": "longalign-local",
                            "cluster": {"server": server, "certificate-authority": str(self.ca.cert)},
                        }
                    ],
                    "users": [{"name": "admin", "user": user}],
                    "contexts": [
                        {"name": "longalign-local", "context": {"cluster": "longalign-local", "user": "admin"}}
                    ],
                },
                indent=2,
            )
        )
        return path

    def _sign(self, name: str, subject: str, extensions: str) -> KeyPair:
        pair = KeyPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        (self.dir / f"{name}.ext").write_text(extensions)
        self._openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            pair.key.name,
            "-out",
            f"{name}.csr",
        )
        self._openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            f"{name}.ext",
            "-out",
            pair.cert.name,
        )
        return pair

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)
