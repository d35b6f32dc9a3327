#!/usr/bin/env python3
"""GPU probe for llorch: NVML vs nvidia-smi inventory, VRAM-only llama.cpp loads
per card, per-process memory, speed of direct llama-cpp-python, import order.

Run by bench/gpu/device_probe.sh on the device machine:
  python3 bench/gpu/probe.py main --small S.gguf --big B.gguf --out DIR
Each measurement is a child process (`probe.py child ...`) started with
CUDA_VISIBLE_DEVICES=<i>, so that per-pid memory and the card mapping can be seen.
The child imports llama_cpp FIRST (importing nats first once crashed CUDA loads),
unless --import-nats-first asks to test exactly that.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

MIB = 1 << 20


# ----------------------------------------------------------------------------- child
def _nvml_self(pid: int) -> dict:
    """Where NVML sees this pid (all cards: NVML ignores CUDA_VISIBLE_DEVICES)."""
    try:
        return _nvml_self_unsafe(pid)
    except Exception as e:
        return {"pid": pid, "cards": [], "error": repr(e)}


def _nvml_self_unsafe(pid: int) -> dict:
    import pynvml

    pynvml.nvmlInit()
    cards = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        cards.append(
            {
                "nvml_index": i,
                "uuid": pynvml.nvmlDeviceGetUUID(h),
                "used_bytes": mem.used,
                "free_bytes": mem.free,
                "procs": [{"pid": p.pid, "used_bytes": p.usedGpuMemory} for p in procs],
                "self_used_bytes": next((p.usedGpuMemory for p in procs if p.pid == pid), None),
            }
        )
    pynvml.nvmlShutdown()
    return {"pid": pid, "cards": cards}


def _smi_apps() -> str:
    try:
        return subprocess.run(
            [
                "nvidia-smi",
                "--query-compute-apps=pid,gpu_uuid,used_memory",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except Exception as e:
        return f"error: {e}"


def _one_run(llm, prompt: str, max_tokens: int) -> dict:  # type: ignore[no-untyped-def]
    """One streamed greedy completion. A token chunk has no finish_reason; the stream
    ends with one extra empty chunk that carries it."""
    t0 = time.perf_counter()
    t_first = t_last = None
    n = 0
    finish = None
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
        now = time.perf_counter()
        fr = chunk["choices"][0].get("finish_reason")
        if fr is None:
            n += 1
            t_first = t_first or now
            t_last = now
        finish = fr or finish
    t_end = time.perf_counter()
    assert t_first is not None and t_last is not None
    return {
        "ttft_s": t_first - t0,
        "total_s": t_end - t0,
        "tokens": n,
        "finish": finish,
        "decode_tok_s": (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else None,
        "e2e_tok_s": n / (t_end - t0),
    }


def _summ(runs: list[dict]) -> dict:
    def med(k: str) -> float:
        return statistics.median(r[k] for r in runs if r[k] is not None)

    ttfts = sorted(r["ttft_s"] for r in runs)
    return {
        "runs": len(runs),
        "ttft_ms_p50": 1000 * med("ttft_s"),
        "ttft_ms_min": 1000 * ttfts[0],
        "ttft_ms_max": 1000 * ttfts[-1],
        "decode_tok_s_p50": med("decode_tok_s"),
        "e2e_tok_s_p50": med("e2e_tok_s"),
        "total_ms_p50": 1000 * med("total_s"),
        "tokens": sorted({r["tokens"] for r in runs}),
        "finish": sorted({str(r["finish"]) for r in runs}),
    }


def child(a: argparse.Namespace) -> None:
    if a.import_nats_first:
        import nats  # noqa: F401
    import llama_cpp

    res: dict = {
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "llama_cpp_version": llama_cpp.__version__,
        "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
        "import_nats_first": a.import_nats_first,
    }
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(a.model, n_gpu_layers=-1, n_ctx=a.n_ctx, seed=0, verbose=True)
    res["load_s"] = time.perf_counter() - t0
    res["n_layer"] = llm._model.n_layer() if hasattr(llm._model, "n_layer") else None
    res["after_load"] = _nvml_self(os.getpid())
    res["smi_apps_after_load"] = _smi_apps()
    _one_run(llm, "Warm-up:", 8)
    runs = [
        _one_run(
            llm, f"Request {r}: Once upon a time, in a land far away, there lived a", a.max_tokens
        )
        for r in range(a.runs)
    ]
    res["summary"] = _summ(runs)
    res["runs"] = runs
    res["after_runs"] = _nvml_self(os.getpid())
    print("PROBE_RESULT " + json.dumps(res), flush=True)
    if a.hold_s:
        time.sleep(a.hold_s)


# ----------------------------------------------------------------------------- parent
LOG_PATTERNS = {
    "offloaded": r"offloaded (\d+)/(\d+) layers to GPU",
    "using_device": r"using device (CUDA\d+ \(.*)",
    "model_buffer": r"(CUDA\d+|CPU|CPU_Mapped|CUDA_Host) model buffer size\s*=\s*([\d.]+) MiB",
    "kv_buffer": r"(CUDA\d+|CPU) KV buffer size\s*=\s*([\d.]+) MiB",
    "compute_buffer": r"(CUDA\d+|CUDA_Host|CPU) compute buffer size\s*=\s*([\d.]+) MiB",
    "ggml_cuda_init": r"(ggml_cuda_init: .*|  Device \d+: .*)",
}


def _parse_log(text: str) -> dict:
    out: dict = {}
    for key, pat in LOG_PATTERNS.items():
        out[key] = re.findall(pat, text)
    off = out["offloaded"]
    out["all_offloaded"] = bool(off) and all(a == b for a, b in off)
    return out


def run_child(
    name: str,
    gpu: str,
    model: str,
    outdir: Path,
    runs: int,
    max_tokens: int,
    timeout: int,
    extra: list[str] | None = None,
) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        __file__,
        "child",
        "--model",
        model,
        "--runs",
        str(runs),
        "--max-tokens",
        str(max_tokens),
        *(extra or []),
    ]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, so, se = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, so, se = (
            "timeout",
            (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""),
            (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or ""),
        )
    (outdir / f"{name}.log").write_text(se + "\n---- stdout\n" + so)
    res: dict = {"name": name, "gpu_env": gpu, "rc": rc, "wall_s": time.perf_counter() - t0}
    for line in so.splitlines():
        if line.startswith("PROBE_RESULT "):
            res.update(json.loads(line[len("PROBE_RESULT ") :]))
    res["llama_log"] = _parse_log(se)
    res["log_tail"] = se[-1500:] if rc != 0 else ""
    return res


def smi_inventory(outdir: Path) -> dict:
    q = (
        "index,name,uuid,pci.bus_id,memory.total,memory.used,memory.free,memory.reserved,"
        "driver_version"
    )
    rows = (
        subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()
    )
    keys = q.split(",")
    gpus = [dict(zip(keys, [c.strip() for c in r.split(",")], strict=False)) for r in rows]
    head = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
    (outdir / "nvidia-smi.txt").write_text(head)
    full = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True).stdout
    (outdir / "nvidia-smi-q.txt").write_text(full)
    m = re.search(r"CUDA Version:\s*([\d.]+)", head)
    return {
        "gpus": gpus,
        "cuda_version": m.group(1) if m else None,
        "unit_note": "nvidia-smi memory.* in MiB (nounits)",
    }


def nvml_inventory() -> dict:
    import pynvml

    pynvml.nvmlInit()
    cv = pynvml.nvmlSystemGetCudaDriverVersion()
    inv: dict = {
        "module": pynvml.__file__,
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "cuda_driver_version": f"{cv // 1000}.{(cv % 1000) // 10}",
        "nvml_version": pynvml.nvmlSystemGetNVMLVersion(),
        "gpus": [],
    }
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        m = pynvml.nvmlDeviceGetMemoryInfo(h)
        g = {
            "index": i,
            "name": pynvml.nvmlDeviceGetName(h),
            "uuid": pynvml.nvmlDeviceGetUUID(h),
            "pci_bus_id": pynvml.nvmlDeviceGetPciInfo(h).busId,
            "total_bytes": m.total,
            "used_bytes": m.used,
            "free_bytes": m.free,
            "cc": pynvml.nvmlDeviceGetCudaComputeCapability(h),
        }
        try:
            m2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            g.update(
                v2_total_bytes=m2.total,
                v2_reserved_bytes=m2.reserved,
                v2_used_bytes=m2.used,
                v2_free_bytes=m2.free,
            )
        except Exception as e:
            g["v2_error"] = repr(e)
        inv["gpus"].append(g)
    pynvml.nvmlShutdown()
    return inv


def compare(smi: dict, nvml: dict) -> list[dict]:
    rows = []
    for s, n in zip(smi["gpus"], nvml["gpus"], strict=False):
        rows.append(
            {
                "index": n["index"],
                "uuid_match": s["uuid"] == n["uuid"],
                "smi_total_mib": int(s["memory.total"]),
                "nvml_total_mib": n["total_bytes"] / MIB,
                "nvml_v2_total_mib": n.get("v2_total_bytes", 0) / MIB,
                "smi_free_mib": int(s["memory.free"]),
                "nvml_free_mib": n["free_bytes"] / MIB,
                "smi_reserved_mib": s.get("memory.reserved"),
                "nvml_v2_reserved_mib": n.get("v2_reserved_bytes", 0) / MIB,
            }
        )
    return rows


def concurrent(small: str, outdir: Path, n_gpus: int, runs: int) -> dict:
    """One small-model process per card at once: placement across GPUs, no interference."""
    env0 = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = []
    t0 = time.perf_counter()
    for i in range(n_gpus):
        cmd = [
            sys.executable,
            __file__,
            "child",
            "--model",
            small,
            "--runs",
            str(runs),
            "--max-tokens",
            "64",
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                env=dict(env0, CUDA_VISIBLE_DEVICES=str(i)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    out = {}
    for i, p in enumerate(procs):
        so, se = p.communicate(timeout=180)
        (outdir / f"concurrent_gpu{i}.log").write_text(se)
        r = next((json.loads(x[13:]) for x in so.splitlines() if x.startswith("PROBE_RESULT ")), {})
        out[f"gpu{i}"] = {
            "rc": p.returncode,
            "summary": r.get("summary"),
            "offloaded": _parse_log(se)["offloaded"],
        }
    out["wall_s"] = time.perf_counter() - t0
    return out


def main(a: argparse.Namespace) -> None:
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    res: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "extra": {}}
    if a.meta_json:
        res["extra"] = json.loads(Path(a.meta_json).read_text())

    json_path = Path(a.json) if a.json else outdir / "probe.json"

    def save() -> None:
        json_path.write_text(json.dumps(res, indent=1, default=str))

    res["smi"] = smi_inventory(outdir)
    res["nvml"] = nvml_inventory()
    res["smi_vs_nvml"] = compare(res["smi"], res["nvml"])
    save()
    n = len(res["nvml"]["gpus"])
    steps = [(f"small_gpu{i}", str(i), a.small, a.runs, 120) for i in range(n)]
    if a.big:
        steps += [(f"big_gpu{i}", str(i), a.big, a.big_runs, 240) for i in range(n)]
    res["loads"] = {}
    for name, gpu, model, runs, tmo in steps:
        r = run_child(name, gpu, model, outdir, runs, 64, tmo)
        res["loads"][name] = r
        save()
        _print_load(r, res["nvml"])
    if n > 1:
        res["concurrent"] = concurrent(a.small, outdir, n, 10)
        save()
        print("concurrent:", json.dumps(res["concurrent"]))
    r = run_child("import_nats_first", "0", a.small, outdir, 3, 16, 120, ["--import-nats-first"])
    res["import_nats_first"] = {k: r.get(k) for k in ("rc", "load_s", "summary", "log_tail")}
    res["import_nats_first"]["offloaded"] = r["llama_log"]["offloaded"]
    save()
    print("import nats first: rc", r["rc"], "offloaded", r["llama_log"]["offloaded"])
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    print_table(res)


def _where(r: dict, nvml: dict) -> tuple[list, list]:
    """(cards where NVML sees the child's pid [(index, MiB)], uuids of them)."""
    seen = [
        (c["nvml_index"], c["self_used_bytes"] / MIB)
        for c in r.get("after_load", {}).get("cards", [])
        if c["self_used_bytes"]
    ]
    return seen, [nvml["gpus"][i]["uuid"] for i, _ in seen]


def _print_load(r: dict, nvml: dict) -> None:
    seen, _ = _where(r, nvml)
    s = r.get("summary") or {}
    print(
        f"{r['name']}: rc={r['rc']} offloaded={r['llama_log']['offloaded']} "
        f"load={r.get('load_s', 0):.2f}s pid_on_cards(MiB)={seen} "
        f"ttft_p50={s.get('ttft_ms_p50', 0):.1f}ms decode={s.get('decode_tok_s_p50', 0):.0f} tok/s "
        f"e2e={s.get('e2e_tok_s_p50', 0):.0f} tok/s "
        f"tokens={s.get('tokens')}",
        flush=True,
    )


def print_table(res: dict) -> None:
    print("\n==== summary")
    print(
        "driver",
        res["nvml"]["driver"],
        "CUDA",
        res["smi"]["cuda_version"],
        "nvml cuda",
        res["nvml"]["cuda_driver_version"],
    )
    for row in res["smi_vs_nvml"]:
        print("mem", json.dumps(row))
    print(
        f"{'run':14} {'rc':>4} {'offl':>7} {'load s':>7} {'ttft ms':>8} {'dec t/s':>8} "
        f"{'e2e t/s':>8}  pid seen on (nvml idx, MiB)"
    )
    for name, r in res["loads"].items():
        s = r.get("summary") or {}
        off = r["llama_log"]["offloaded"]
        seen, _ = _where(r, res["nvml"])
        print(
            f"{name:14} {r['rc']!s:>4} {'/'.join(off[0]) if off else '-':>7} "
            f"{r.get('load_s', 0):7.2f} "
            f"{s.get('ttft_ms_p50', 0):8.1f} {s.get('decode_tok_s_p50', 0):8.0f} "
            f"{s.get('e2e_tok_s_p50', 0):8.0f}  {seen}"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child")
    c.add_argument("--model", required=True)
    c.add_argument("--runs", type=int, default=20)
    c.add_argument("--max-tokens", type=int, default=64)
    c.add_argument("--n-ctx", type=int, default=2048)
    c.add_argument("--import-nats-first", action="store_true")
    c.add_argument("--hold-s", type=float, default=0)
    m = sub.add_parser("main")
    m.add_argument("--small", required=True)
    m.add_argument("--big", default="")
    m.add_argument("--out", required=True, help="folder for the per-run llama.cpp logs")
    m.add_argument("--json", default="", help="where probe.json goes (default: --out)")
    m.add_argument("--runs", type=int, default=20)
    m.add_argument("--big-runs", type=int, default=5)
    m.add_argument("--meta-json", default="")
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    child(args) if args.cmd == "child" else main(args)
