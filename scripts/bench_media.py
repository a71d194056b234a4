#!/usr/bin/env python3
"""The media benchmarks of `make bench`, against a running stack (`make start`):

- the origin against nginx serving the same blob files, with wrk: whole-file reads and
  random 1 MiB ranges (bench/wrk/range.lua);
- a tus upload of a large file over loopback (one PATCH, as a stock client on a good link
  sends it) against the disk's sequential write rate (dd with fdatasync), taking turns.

usage: bench_media.py OUT_DIR BFF_URL BLOB_ROOT [--duration S] [--upload-mib N] [--pairs N]
Writes OUT_DIR/media.json (and media.cmd). Exits 1, naming the failure, when a step fails.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import time

import benchlib
from benchlib import MIB, call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX_PORT = int(os.environ.get("TERTULIA_BENCH_NGINX_PORT", "8098"))


def log(msg):
    print(f"==> media: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    benchlib.fail("media", msg)


def new_video(bff, token, title):
    _, _, body = call("POST", f"{bff}/api/v1/videos", {"title": title, "visibility": "public"}, token)
    return body["id"], body["upload"]["url"]


def tus_upload(upload_url, path):
    """Creates the upload, then sends the file in one streamed PATCH (curl -T); returns seconds
    from the creation request to the final answer (which comes after the file is stored)."""
    size = os.path.getsize(path)
    start = time.monotonic()
    status, headers, _ = call("POST", upload_url, headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(size)})
    location = headers.get("Location") or headers.get("location")
    if status != 201 or not location:
        fail(f"tus creation answered {status} without a Location")
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PATCH", "-T", path,
         "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
         "-H", "Content-Type: application/offset+octet-stream", "-H", "Expect:", location],
        capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if out.stdout.strip() != "204":
        fail(f"the PATCH answered {out.stdout.strip()!r}: {out.stderr.strip()}")
    return seconds


def wait_ready(bff, token, video_id, limit_s=300):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        _, _, video = call("GET", f"{bff}/api/v1/videos/{video_id}", token=token)
        if video["status"] == "ready":
            return video
        if video["status"] == "failed":
            fail(f"processing failed: {video.get('failure_reason')}")
        time.sleep(0.5)
    fail(f"the video was not ready after {limit_s} s")


def make_clip(path):
    """A 12 s 720p clip encoded nearly losslessly: a large original (tens of MiB)."""
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440", "-t", "12", "-c:v", "libx264", "-preset",
         "ultrafast", "-qp", "4", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", path],
        check=True)


def blob_file(blob_root, local):
    """The stored original (content-addressed) whose bytes are `local`'s."""
    size = os.path.getsize(local)
    folder = os.path.join(blob_root, "originals")
    for name in os.listdir(folder):
        candidate = os.path.join(folder, name)
        if os.path.getsize(candidate) == size:
            with open(candidate, "rb") as a, open(local, "rb") as b:
                if a.read() == b.read():
                    return name
    fail("the uploaded original is not in the blob root")


def start_nginx(out, blob_root):
    prefix = os.path.join(out, "nginx")
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        root {blob_root};
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-p", prefix, "-c", conf, "-g", "daemon off;"],
                            stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", NGINX_PORT), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                fail(f"nginx did not start: {proc.stderr.read().decode()[:300]}")
            time.sleep(0.05)
    fail("nginx did not listen")


def wrk(url, duration, size=None):
    """wrk with 2 threads and 16 connections; with `size`, random 1 MiB ranges of an object
    of that many bytes."""
    args = ["-t2", "-c16", f"-d{duration}s"]
    env = dict(os.environ)
    if size is not None:
        args += ["-s", os.path.join(ROOT, "bench", "wrk", "range.lua")]
        env["OBJECT_SIZE"] = str(size)
    return benchlib.wrk(args + [url], env)


def disk_write_rate(folder, mib):
    """Sequential write rate of the disk under `folder`, MiB/s (dd, flushed before it ends)."""
    target = os.path.join(folder, "dd-test")
    out = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}",
                          "conv=fdatasync"], capture_output=True, text=True, check=False)
    os.remove(target)
    m = re.search(r"copied, ([\d.]+) s", out.stderr)
    if not m:
        fail(f"dd said: {out.stderr.strip()}")
    return mib / float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("bff")
    ap.add_argument("blob_root")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--upload-mib", type=int, default=1024)
    ap.add_argument("--pairs", type=int, default=3)
    a = ap.parse_args()
    blob_root = os.path.abspath(a.blob_root)
    scratch = os.path.join(a.out, "media-scratch")
    os.makedirs(scratch, exist_ok=True)
    result = {"duration_s": a.duration, "upload_mib": a.upload_mib}
    token = benchlib.sign_up(a.bff, "media")

    log("uploading a clip and waiting until it is processed")
    clip = os.path.join(scratch, "clip.mp4")
    make_clip(clip)
    video_id, upload_url = new_video(a.bff, token, "origin benchmark")
    tus_upload(upload_url, clip)
    video = wait_ready(a.bff, token, video_id)
    size = os.path.getsize(clip)
    result["object_bytes"] = size
    ours = video["playback"]["mp4_url"]
    nginx_url = f"http://127.0.0.1:{NGINX_PORT}/originals/{blob_file(blob_root, clip)}"
    nginx = start_nginx(a.out, blob_root)
    # This machine's throughput drifts by tens of percent from one run to the next, so the
    # two servers take turns: `pairs` runs of each, back to back, and the ratio is the
    # median of the pairs' ratios.
    result["pairs"] = a.pairs
    try:
        for kind, ranges in (("full", None), ("range", size)):
            runs = {"tertulia": [], "nginx": []}
            for n in range(a.pairs):
                log(f"{kind} reads, pair {n + 1} of {a.pairs} ({a.duration} s each)")
                for name, url in (("tertulia", ours), ("nginx", nginx_url)):
                    runs[name].append(wrk(url, a.duration, ranges))
            ratios = [t["mib_per_s"] / n["mib_per_s"] for t, n in zip(runs["tertulia"], runs["nginx"])]
            result[f"{kind}_ratios"] = ratios
            for name, rs in runs.items():
                result[f"{kind}_{name}"] = sorted(rs, key=lambda r: r["mib_per_s"])[len(rs) // 2]
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=10)
    for kind in ("full", "range"):
        for name in ("tertulia", "nginx"):
            r = result[f"{kind}_{name}"]
            if r["non_2xx"] or r["socket_errors"]:
                fail(f"{kind} reads from {name}: {r['non_2xx']} non-2xx, socket errors {r['socket_errors']}")

    # The disk's rate moves by half between runs here: the upload and dd take turns, `pairs`
    # times; each figure is the median of its runs, and the ratio the median of the pairs'.
    work = os.path.join(os.path.dirname(blob_root), "work")
    os.makedirs(work, exist_ok=True)
    big = os.path.join(scratch, "big.bin")
    with open(big, "wb") as f:
        for _ in range(a.upload_mib):
            f.write(os.urandom(MIB))
    disk, uploads = [], []
    for n in range(a.pairs):
        log(f"disk sequential write rate ({a.upload_mib} MiB, dd conv=fdatasync), "
            f"then a tus upload of as much: pair {n + 1} of {a.pairs}")
        disk.append(disk_write_rate(work, a.upload_mib))
        _, upload_url = new_video(a.bff, token, f"upload benchmark {n + 1}")
        uploads.append(tus_upload(upload_url, big))
    result["disk_write_mib_s"] = statistics.median(disk)
    result["upload_seconds"] = statistics.median(uploads)
    result["upload_mib_s"] = a.upload_mib / result["upload_seconds"]
    result["upload_ratios"] = [a.upload_mib / s / d for s, d in zip(uploads, disk)]
    shutil.rmtree(scratch, ignore_errors=True)
    with open(os.path.join(a.out, "media.json"), "w") as f:
        json.dump(result, f, indent=2)
    log(f"origin full {result['full_tertulia']['mib_per_s']:.0f} MiB/s vs nginx "
        f"{result['full_nginx']['mib_per_s']:.0f}; upload {result['upload_mib_s']:.0f} MiB/s vs "
        f"disk {result['disk_write_mib_s']:.0f}")


if __name__ == "__main__":
    main()
