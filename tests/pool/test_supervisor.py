from pathlib import Path

from llorch_pool.supervisor import Launch, PoolSettings, log_path, worker_argv, worker_env

SETTINGS = PoolSettings(
    nats_url="nats://h:4222", pool_id="p1", prefix="x.v1", log_dir=Path("/d/logs"), threads=3
)
LAUNCH = Launch(
    worker_id="w1", model="m", model_path="/m.gguf", n_ctx=512, device=2, device_kind="gpu"
)


def test_argv_is_the_worker_contract() -> None:
    assert worker_argv(SETTINGS, LAUNCH, python="py") == [
        *("py", "-m", "llorch_worker", "--nats-url", "nats://h:4222", "--worker-id", "w1"),
        *("--pool-id", "p1", "--model", "m", "--model-path", "/m.gguf", "--n-ctx", "512"),
        *("--device", "2", "--device-kind", "gpu", "--prefix", "x.v1", "--slots", "1"),
        *("--threads", "3"),
    ]


def test_argv_passes_the_slots_on() -> None:
    argv = worker_argv(SETTINGS, Launch("w1", "m", "/m.gguf", 512, 2, "gpu", slots=8))
    assert argv[argv.index("--slots") + 1] == "8"


def test_threads_omitted_when_unset() -> None:
    settings = PoolSettings("nats://h", "p1", "x.v1", Path("/d"))
    assert "--threads" not in worker_argv(settings, LAUNCH)


def test_env_pins_the_gpu_or_hides_all() -> None:
    base = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert worker_env(base, "gpu", 2) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2"}
    assert worker_env(base, "cpu", 0) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": ""}
    assert base["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_log_file_per_worker() -> None:
    assert log_path(SETTINGS, "w1") == Path("/d/logs/worker-w1.log")
