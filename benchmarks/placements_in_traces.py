"""The placements a run's DiT actually ran, per request, from the overlap monitor's trace files
(SGLANG_AUTOPERF_TRACE_DIR): calibration steps carry the trial, served steps the manager's own
setting read at the step. Prints one JSON object: {trace file: [placement labels in step order]}.

usage: python3 benchmarks/placements_in_traces.py TRACE_DIR
"""
import glob
import json
import os
import sys


def main() -> int:
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print("usage: placements_in_traces.py TRACE_DIR", file=sys.stderr)
        return 2
    seen = {}
    for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
        with open(path) as f:
            steps = json.load(f)["steps"]
        seen[os.path.basename(path)] = [
            "resident={resident_layers} prefetch={prefetch_layers} {policy}".format(**s["placement"]) for s in steps]
    print(json.dumps(seen, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
