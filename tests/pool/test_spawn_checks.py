import pytest

from llorch_pool import registry, spawn_checks
from llorch_pool.catalog import ModelRecord
from schemas import Device, ErrorCode, ProtocolError, SpawnRequest

MODEL = ModelRecord(
    path="/m.gguf",
    sha256="ab" * 32,
    size_bytes=1000,
    mtime_ns=1,
    n_ctx_train=2048,
    n_layers=2,
    kv_bytes_per_token=64,
)
DEVICES = [
    Device(
        index=i, uuid=f"u{i}", name="g", kind="gpu", total_bytes=10**6, free_bytes=f, used_bytes=0
    )
    for i, f in ((0, 999), (3, 1000))
]


def check(**fields: object) -> Device:
    req = SpawnRequest(**{"worker_id": "w", "model": "m", "device": 3, "n_ctx": 512, **fields})
    busy = {"taken": registry.starting("taken", "m", 0, 1)}
    return spawn_checks.check_request(req, busy, DEVICES, {"m": MODEL})


def test_valid_request_returns_its_device() -> None:
    assert check().index == 3


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"worker_id": "a.b"}, ErrorCode.INVALID_ID),
        ({"worker_id": "taken"}, ErrorCode.INVALID_PARAMS),
        ({"n_ctx": 0}, ErrorCode.INVALID_PARAMS),
        ({"model": "other"}, ErrorCode.MODEL_NOT_FOUND),
        ({"device": 1}, ErrorCode.INVALID_PARAMS),
        ({"device": -1}, ErrorCode.INVALID_PARAMS),
    ],
)
def test_each_fact_has_its_code(fields: dict[str, object], code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as err:
        check(**fields)
    assert err.value.code == code


def test_fits_when_free_covers_the_file_and_the_kv_cache_of_every_slot() -> None:
    assert spawn_checks.need_bytes(MODEL, 4, 2) == 1000 + 64 * 4 * 2
    room = Device(
        index=5, uuid="u5", name="g", kind="gpu", total_bytes=10**6, free_bytes=1512, used_bytes=0
    )
    spawn_checks.check_fits(room, MODEL, n_ctx=4, slots=2)
    spawn_checks.check_fits(room, MODEL, n_ctx=8, slots=1)
    for n_ctx, slots in ((4, 3), (9, 1)):  # more positions than the room holds
        with pytest.raises(ProtocolError) as err:
            spawn_checks.check_fits(room, MODEL, n_ctx=n_ctx, slots=slots)
        assert err.value.code == ErrorCode.INSUFFICIENT_VRAM
