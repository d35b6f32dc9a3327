"""llorch_common.connect: credentials from flags and env, never a secret in argv, repr or logs."""

from __future__ import annotations

import argparse
from pathlib import Path

from llorch_common.connect import Credentials, add_arguments, fingerprint
from llorch_orch import natsconf
from llorch_pool import supervisor


def parse(argv: list[str], env: dict[str, str], who: str = "") -> Credentials:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_arguments(parser, "worker")
    return Credentials.from_args(parser.parse_args(argv), env, who)


def test_flags_name_files_and_secrets_come_from_env() -> None:
    env = {"LLORCH_NATS_PASSWORD": "hunter2", "LLORCH_NATS_USER": "envuser",
           "LLORCH_WORKER_NATS_TOKEN": "wtok"}  # fmt: skip
    assert parse(["--tls-ca", "/ca.pem"], env).tls_ca == Path("/ca.pem")
    creds = parse(["--user", "alice"], env)  # the flag wins over LLORCH_NATS_USER
    assert (creds.user, creds.password) == ("alice", "hunter2")
    opts = creds.connect_options()
    assert (opts["user"], opts["password"], opts["inbox_prefix"]) == ("alice", "hunter2",
                                                                      "_INBOX.alice")  # fmt: skip
    workers = parse(["--worker-nkey-seed", "/w.nk"], env, "worker")
    assert (workers.nkey_seed_file, workers.token, workers.user) == (Path("/w.nk"), "wtok", None)


def test_secrets_never_show_in_repr_or_description() -> None:
    creds = Credentials(user="alice", password="hunter2", token="s3cret")
    for text in (repr(creds), creds.describe()):
        assert "hunter2" not in text and "s3cret" not in text
    assert fingerprint("hunter2") in creds.describe()


def test_nkey_identity_listens_under_its_public_key(tmp_path: Path) -> None:
    [ident] = natsconf.ensure_seeds(tmp_path, [natsconf.Identity("c", "client")])
    creds = Credentials(nkey_seed_file=natsconf.seed_file(tmp_path, "c"))
    assert creds.inbox == f"_INBOX.{ident.public_key}"
    assert creds.connect_options()["nkeys_seed"] == str(natsconf.seed_file(tmp_path, "c"))


def test_workers_get_their_identity_by_env_and_never_the_pools() -> None:
    worker = Credentials(nkey_seed_file=Path("/creds/worker-p1.nk"))
    pool_env = {"PATH": "/bin", "LLORCH_NATS_NKEY_SEED": "/creds/pool-p1.nk",
                "LLORCH_NATS_PASSWORD": "poolsecret", "LLORCH_WORKER_NATS_TOKEN": "t"}  # fmt: skip
    env = supervisor.worker_env(pool_env, "cpu", 0, worker.to_env())
    assert env["LLORCH_NATS_NKEY_SEED"] == "/creds/worker-p1.nk"
    assert "LLORCH_NATS_PASSWORD" not in env and "LLORCH_WORKER_NATS_TOKEN" not in env
    assert env["PATH"] == "/bin"
    settings = supervisor.PoolSettings("nats://x", "p1", "llorch.v1", Path("/logs"),
                                       credentials_env=worker.to_env())  # fmt: skip
    launch = supervisor.Launch("w1", "m", "/m.gguf", 512, 0, "cpu")
    assert not any(
        "creds" in arg or "nk" in arg for arg in supervisor.worker_argv(settings, launch)
    )
