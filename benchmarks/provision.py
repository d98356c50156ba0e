"""Time of ``hierfl provision`` for 1 cloud, 10 fogs and 1,000 edges (target: under 60 s).

Prints one JSON object per mode (``tls`` true and false): ``{"fogs", "edges", "parties", "tls",
"seconds", "files", "bytes"}``, where ``seconds`` is the wall time of ``provision()`` into a fresh
temporary folder (keys, certificates, 1,011 kits, each with its own trust.json copy).

Usage: python benchmarks/provision.py [--fogs F] [--edges-per-fog E]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hierfl.provision import ProjectSpec, provision
from hierfl.provision.project import numbered_edges


def main() -> None:
    """Run the benchmark and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fogs", type=int, default=10)
    parser.add_argument("--edges-per-fog", type=int, default=100)
    args = parser.parse_args()
    fogs = {f"f{i:02d}": numbered_edges(args.edges_per_fog) for i in range(args.fogs)}
    spec = ProjectSpec("bench", fogs)
    for tls in (True, False):
        with tempfile.TemporaryDirectory(prefix="hierfl-provision-") as tmp:
            started = time.perf_counter()
            provision(spec, Path(tmp) / "out", tls=tls)
            seconds = time.perf_counter() - started
            files = [p for p in Path(tmp).rglob("*") if p.is_file()]
            print(json.dumps({
                "fogs": args.fogs,
                "edges": args.fogs * args.edges_per_fog,
                "parties": len(spec.parties),
                "tls": tls,
                "seconds": round(seconds, 2),
                "files": len(files),
                "bytes": sum(p.stat().st_size for p in files),
            }), flush=True)


if __name__ == "__main__":
    main()
