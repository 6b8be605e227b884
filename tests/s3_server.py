"""A real S3-compatible server on loopback for tests: moto's server in a subprocess, with
authentication on (an IAM user whose key the tests use, so wrong keys are refused), which a test
can stop (SIGSTOP: requests hang and time out) and start again with its objects kept."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REGION = "us-east-1"
# moto lets this many requests through unauthenticated: creating the user, its policy, its key
SETUP_ACTIONS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """`python -m moto.server` on 127.0.0.1:<free port>; `env` holds the AWS variables to use."""

    def __init__(self, log_dir: Path):
        import boto3

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_ACTIONS))
        self.log = open(log_dir / f"moto-{self.port}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_listening()
        iam = boto3.client("iam", endpoint_url=self.url, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="emoforge")
        iam.put_user_policy(UserName="emoforge", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="emoforge")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.env = {"AWS_ENDPOINT_URL": self.url, "AWS_REGION": REGION,
                    "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def _wait_listening(self) -> None:
        for _ in range(300):
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not listen on port {self.port}")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def new_bucket(self) -> str:
        name = f"emo-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def filesystem(self):
        """A plain pyarrow S3FileSystem for this server (what a user without emoforge builds)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                                 region=REGION, access_key=self.access_key,
                                 secret_key=self.secret_key)

    def pause(self) -> None:
        """Stop the server process (its objects stay in memory; requests hang)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
