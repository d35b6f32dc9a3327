"""What a step of greedy sequences costs to pick their tokens: llama.cpp's greedy sampler once
per sequence (what the worker did) against one argmax over the logits of all of them (what
it does since), on the same decoded logits, bundled model, this box's CPU.

    python -m bench.greedy_pick [--sequences 1,4,16,32] [--reps 200]

Both must pick the same tokens (checked). Writes bench/results/greedy_pick.json.
"""

from __future__ import annotations

import argparse
import time

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaModel

from bench.common import model_path, table, write_results


def measure(n: int, reps: int, model: LlamaModel) -> dict[str, float]:
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_seq_max, cparams.kv_unified = 64 * n, n, False
    cparams.n_batch = cparams.n_ubatch = max(n, 8)
    ctx = llama_cpp.llama_init_from_model(model.model, cparams)
    batch = llama_cpp.llama_batch_init(cparams.n_batch, 0, 1)
    try:
        prompt = model.tokenize(b"Hello there, how are", True, False)
        for i in range(n):  # one token of each sequence, every one an output
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = prompt[i % len(prompt)], 0, 1  # type: ignore[call-overload]
            batch.seq_id[i][0], batch.logits[i] = i, True
        batch.n_tokens = n
        assert llama_cpp.llama_decode(ctx, batch) == 0
        vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model.model))
        greedy = llama_cpp.llama_sampler_init_greedy()
        t0 = time.perf_counter()
        for _ in range(reps):
            per_sequence = [llama_cpp.llama_sampler_sample(greedy, ctx, i) for i in range(n)]
        t1 = time.perf_counter()
        for _ in range(reps):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(n, vocab))
            at_once = logits.argmax(axis=1)
        t2 = time.perf_counter()
        llama_cpp.llama_sampler_free(greedy)
        assert per_sequence == [int(t) for t in at_once], "the two picks differ"
        return {"per_sequence_ms": (t1 - t0) / reps * 1e3, "argmax_ms": (t2 - t1) / reps * 1e3}
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--sequences", default="1,4,16,32")
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    model = LlamaModel(path_model=str(model_path()), params=params, verbose=False)
    results = {n: measure(n, args.reps, model) for n in map(int, args.sequences.split(","))}
    rows = [[n, r["per_sequence_ms"], r["argmax_ms"]] for n, r in results.items()]
    print(table(["sequences", "greedy sampler each, ms a step", "one argmax, ms a step"], rows))
    print(f"wrote {write_results('greedy_pick', {'reps': args.reps, 'steps': results})}")


if __name__ == "__main__":
    main()
