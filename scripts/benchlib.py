"""What the media and catalog benchmarks share: calls to the public API and wrk's results."""
import json
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request

MIB = 1024 * 1024


def fail(what, msg):
    print(f"{what} benchmark failed: {msg}", file=sys.stderr)
    sys.exit(1)


def call(method, url, body=None, token=None, headers=None):
    """(status, headers, JSON body or None); any error status ends the run, naming it."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, dict(r.headers), (json.loads(raw) if raw.strip() else None)
    except urllib.error.HTTPError as e:
        fail("the", f"{method} {url.split('?')[0]} answered {e.code}: {e.read()[:300]!r}")


def sign_up(bff, prefix):
    """A new user's access token."""
    name = prefix + secrets.token_hex(4)
    creds = {"username": name, "password": "bench-password-" + name}
    call("POST", f"{bff}/api/v1/auth/register", creds)
    return call("POST", f"{bff}/api/v1/auth/login", creds)[2]["access_token"]


def wrk(args, env=None):
    """Runs wrk (with --latency) and reads its report: requests and MiB per second, p50 and
    p99 in ms, non-2xx answers and socket errors."""
    out = subprocess.run(["wrk", "--latency", *args], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode != 0:
        fail("the", f"wrk failed: {out.stderr.strip()}")
    text = out.stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    pct = {p: float(v) * scale[u]
           for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", text)}
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    per = {"B": 1 / MIB, "KB": 1 / 1024, "MB": 1, "GB": 1024}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sockets = re.search(r"Socket errors: (.*)", text)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "mib_per_s": float(transfer.group(1)) * per[transfer.group(2)] if transfer else None,
        "p50_ms": pct.get("50"),
        "p99_ms": pct.get("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sockets.group(1) if sockets else None,
    }
