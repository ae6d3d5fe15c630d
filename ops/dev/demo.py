"""Submit a scene to the local farm, wait for it, print the job, and check the video downloads."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import requests

from workers.media import probe


def main() -> int:
    path, class_name = sys.argv[1], sys.argv[2]
    base, key = os.environ["FARM_API_URL"], os.environ["FARM_API_KEY"]
    headers = {"Authorization": f"Bearer {key}"}
    with open(path) as fh:
        body = {"code": fh.read(), "className": class_name, "quality": "low"}
    submitted = requests.post(f"{base}/api/v2/render", json=body, headers=headers, timeout=10)
    submitted.raise_for_status()
    job_id = submitted.json()["jobId"]
    print(f"submitted {job_id}", file=sys.stderr)
    deadline = time.monotonic() + 300
    while True:
        job = requests.get(f"{base}/api/v2/render/{job_id}", headers=headers, timeout=10).json()
        progress = job.get("progress") or {}
        print(
            f"  {job['status']:<9} chunks {progress.get('chunksDone')}/"
            f"{progress.get('chunksTotal')}",
            file=sys.stderr,
        )
        if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(json.dumps(job, indent=2))
    if job["status"] != "completed":
        return 1
    with tempfile.NamedTemporaryFile(suffix=".mp4") as out:
        with urllib.request.urlopen(job["result"]["video"]) as response:
            out.write(response.read())
        out.flush()
        print(f"video downloads and plays: {probe(Path(out.name))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
