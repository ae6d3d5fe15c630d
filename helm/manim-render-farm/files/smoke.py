"""`helm test` smoke check, run with the API image: `python smoke.py API_URL [QUALITY [RENDERER]]`.

Without QUALITY: the API answers /readyz. With it: a fresh API key (revoked afterwards) submits a
tiny scene of that quality, which must complete with a video (rendered by RENDERER, if given).
"""

import json
import secrets
import subprocess
import sys
import time
import urllib.request

api = sys.argv[1].rstrip("/")
quality = sys.argv[2] if len(sys.argv) > 2 else ""
renderer = sys.argv[3] if len(sys.argv) > 3 else ""
deadline = time.monotonic() + float(sys.argv[4] if len(sys.argv) > 4 else 1800)


def call(method, path, key=None, body=None):
    request = urllib.request.Request(api + path, method=method)
    if key:
        request.add_header("Authorization", "Bearer " + key)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, data, timeout=30) as response:
        return (
            json.load(response) if response.headers.get_content_type() == "application/json" else {}
        )


while True:
    try:
        call("GET", "/readyz")
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"API not ready: {exc}")
        time.sleep(5)
print("API ready")
if not quality:
    sys.exit(0)

created = subprocess.run(
    ["farm", "keys", "create", "--name", "helm-test", "--credits", "1000000", "--json"],
    check=True,
    capture_output=True,
    text=True,
)
key = json.loads(created.stdout)
try:
    word = "t" + secrets.token_hex(4)  # a fresh scene each time: the result cache must not answer
    code = (
        "from manim import *\n"
        "class Smoke(Scene):\n"
        "    def construct(self):\n"
        f"        self.play(FadeIn(Text('{word}')), run_time=0.5)\n"
    )
    job = call(
        "POST",
        "/api/v2/render",
        key["key"],
        {"code": code, "className": "Smoke", "quality": quality},
    )
    job_id = job["jobId"]
    while job.get("status") not in ("completed", "failed"):
        if time.monotonic() > deadline:
            sys.exit(f"{quality} job {job_id} still {job.get('status')} at the deadline")
        time.sleep(5)
        job = call("GET", "/api/v2/render/" + job_id, key["key"])
    print(json.dumps({k: job.get(k) for k in ("jobId", "status", "quality", "renderer", "error")}))
    if job["status"] != "completed" or not (job.get("result") or {}).get("video"):
        sys.exit(f"{quality} job {job_id} did not complete: {job.get('error')}")
    if renderer and job.get("renderer") != renderer:
        sys.exit(f"{quality} job {job_id} rendered with {job.get('renderer')}, not {renderer}")
finally:
    subprocess.run(["farm", "keys", "revoke", key["keyId"]], check=False, capture_output=True)
