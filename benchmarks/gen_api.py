"""Run N requests through sglang's Python API (DiffGenerator) in one process and record, per
request, the denoising step times, the output's SHA-256 (bit-identity across arms) and peak VRAM.

Several requests in one process is what shows the plugin's effect: calibration happens on a
warmup copy of the first request, the requests after it run at the tuned placement.

usage: python3 benchmarks/gen_api.py --model-path M --out run.json [--width 832 --height 480
       --frames 17 --steps 8 --requests 2 --server-args '{"dit_layerwise_offload": true}']
"""
import argparse
import hashlib
import json
import os
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default="a red car on the beach at sunset")
    ap.add_argument("--master-port", type=int, default=None,
                    help="sglang's worker rendezvous port; give processes started side by side different ones")
    ap.add_argument("--server-args", default="{}", help="JSON dict of ServerArgs fields (all count as user-pinned)")
    args = ap.parse_args()

    import torch
    from sglang.multimodal_gen import DiffGenerator

    t0 = time.perf_counter()
    record = {"argv": sys.argv[1:], "autoperf": os.environ.get("SGLANG_AUTOPERF"), "requests": [],
              "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__}
    try:
        from importlib.metadata import version

        record["sglang"] = version("sglang")
    except Exception:
        pass
    server_args = {"num_gpus": 1, **json.loads(args.server_args)}
    if args.master_port is not None:
        server_args["master_port"] = args.master_port
    record["server_args"] = server_args
    generator = DiffGenerator.from_pretrained(model_path=args.model_path, **server_args)
    record["startup_s"] = time.perf_counter() - t0
    perf_dir = os.path.dirname(os.path.abspath(args.out))
    try:
        for i in range(args.requests):
            t1 = time.perf_counter()
            result = generator.generate(sampling_params_kwargs=dict(
                prompt=args.prompt, height=args.height, width=args.width, num_frames=args.frames,
                num_inference_steps=args.steps, seed=args.seed, save_output=False,
                perf_dump_path=os.path.join(perf_dir, f"perf_req{i}.json"),
            ))
            result = result[0] if isinstance(result, list) else result
            if result is None:
                record["requests"].append({"index": i, "status": "failed"})
                continue
            samples = result.samples
            digest = None
            if samples is not None and hasattr(samples, "detach"):
                digest = hashlib.sha256(samples.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
            steps = [float(s) for s in (result.metrics or {}).get("steps", [])]
            steady = steps[1:] if len(steps) > 2 else steps
            record["requests"].append({
                "index": i,
                "status": "ok",
                "wall_s": time.perf_counter() - t1,
                "steps_ms": steps,
                "steady_median_ms": statistics.median(steady) if steady else None,
                "steady_min_ms": min(steady) if steady else None,
                "steady_max_ms": max(steady) if steady else None,
                "denoise_ms": (result.metrics or {}).get("stages", {}).get("DenoisingStage"),
                "total_ms": (result.metrics or {}).get("total_duration_ms"),
                "peak_memory_mb": result.peak_memory_mb,
                "sha256": digest,
            })
    except Exception as exc:  # OOM is a result, not a crash of the harness
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        generator.shutdown()
    record["process_s"] = time.perf_counter() - t0
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1, default=str)
    print(json.dumps({k: v for k, v in record.items() if k != "requests"}, default=str))
    for r in record["requests"]:
        print(json.dumps({k: r.get(k) for k in ("index", "status", "steady_median_ms", "steady_min_ms",
                                                "steady_max_ms", "peak_memory_mb", "sha256")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
