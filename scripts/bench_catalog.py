#!/usr/bin/env python3
"""The catalog benchmark of `make bench`, against a running stack (`make start`): generates
videos straight into the catalog's table (the documents the service itself writes), then
measures search through the public API (`GET /api/v2/videos`) with wrk: full text, filters,
both together, and how a page costs at increasing depth (page tokens followed from the first
page).

usage: bench_catalog.py OUT_DIR BFF_URL DATABASE_URL [--videos N] [--duration S] [--schema S]
       [--depths 1,10,100,500]
Writes OUT_DIR/catalog.json. Exits 1, naming the failure, when a step fails.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse

import benchlib
from benchlib import call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Titles and descriptions draw from this vocabulary with a skew (the first words are common,
# the last rare), as real titles do; tags from the first part of it.
WORDS = """
music live guitar cover tutorial cooking recipe travel vlog review unboxing gameplay walkthrough
football highlights news interview podcast lesson piano drums bass vocal concert festival dance
workout yoga running cycling hiking camping fishing garden kitchen bread pasta pizza coffee tea
city beach mountain river forest desert island village market street night morning sunset winter
summer spring autumn rain snow storm ocean lake bridge castle museum library school university
science physics chemistry biology history math coding rust python javascript database linux
network security cloud design drawing painting photography camera drone film trailer animation
comedy sketch prank challenge reaction story documentary nature wildlife bird cat dog horse
car bike train plane boat rocket space planet moon star galaxy robot machine engine repair build
wood metal stone glass paper clay fabric sewing knitting origami lego puzzle chess poker tennis
basketball baseball hockey golf swimming surfing skiing climbing boxing karate marathon sprint
election economy market stock crypto startup career interview resume meeting office remote
family wedding birthday holiday christmas halloween festival parade carnival fireworks
""".split()
TAGS = WORDS[:60]


def log(msg):
    print(f"==> catalog: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    benchlib.fail("catalog", msg)


def psql(url, sql):
    out = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        fail(f"psql: {out.stderr.strip()}")
    return out.stdout.strip()


def seed(url, schema, count, first=1):
    """`count` public, ready videos of 1,000 owners, created one second apart (UUIDv7 ids),
    numbered from `first` (after those a smaller run generated before)."""
    words = "ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]"
    tags = "ARRAY[" + ",".join(f"'{w}'" for w in TAGS) + "]"
    # A skewed pick (index ~ n * r^2), so a few words are very common.
    sql = f"""
SET maintenance_work_mem = '512MB';
SET synchronous_commit = off;
CREATE TEMP TABLE vocab AS SELECT {words} AS w, {tags} AS t;
INSERT INTO {schema}.videos (id, owner_id, doc)
SELECT id, owner, jsonb_build_object(
    'id', id, 'owner_id', owner,
    'title', title, 'description', description, 'tags', to_jsonb(tags),
    'visibility', 'public', 'status', 'ready', 'duration_s', 60.0, 'width', 1280,
    'height', 720, 'renditions', '[]'::jsonb, 'failure_reason', null,
    'content_hash', md5(i::text), 'created_at', to_char(created AT TIME ZONE 'UTC',
    'YYYY-MM-DD"T"HH24:MI:SS"Z"'), 'deleted', false, 'revision', 1)
FROM (
  SELECT i, created,
         (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7000' ||
          '8000' || lpad(to_hex(i), 12, '0'))::uuid AS id,
         md5('owner' || (i % 1000))::uuid AS owner,
         (SELECT string_agg(w[1 + floor(array_length(w, 1) * random() ^ 2)::int], ' ')
            FROM generate_series(1, 3 + i % 4), vocab) AS title,
         (SELECT string_agg(w[1 + floor(array_length(w, 1) * random() ^ 2)::int], ' ')
            FROM generate_series(1, 12 + i % 9), vocab) AS description,
         (SELECT array_agg(DISTINCT t[1 + floor(array_length(t, 1) * random() ^ 2)::int])
            FROM generate_series(1, 1 + i % 3), vocab) AS tags
  FROM generate_series({first}, {first + count - 1}) AS i,
       LATERAL (SELECT timestamptz '2024-01-01' + i * interval '1 second' AS created) t
) s;
"""
    psql(url, sql)
    # The index of search terms is written by a trigger on the same inserts; a vacuum marks
    # its pages all-visible, as autovacuum would, so its scans need not visit them.
    for table in ("videos", "video_terms"):
        psql(url, f"VACUUM ANALYZE {schema}.{table}")


def wrk(bff, token, paths, duration):
    """p50/p99 and rate of GETs cycling through `paths` (2 connections: latency, not load).
    A slow search is a result, not a failure: wrk waits up to 30 s for an answer, and
    errors and timeouts are reported beside the latencies."""
    env = dict(os.environ, PATHS="\n".join(paths), TOKEN=token)
    r = benchlib.wrk(["-t1", "-c2", f"-d{duration}s", "--timeout", "30s", "-s",
                      os.path.join(ROOT, "bench", "wrk", "paths.lua"), bff], env)
    if r["non_2xx"] or r["socket_errors"]:
        log(f"{r['non_2xx']} searches failed ({r['socket_errors']}), e.g. {paths[0]}")
    return {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
            "requests_per_s": r["requests_per_s"], "queries": len(paths), "example": paths[0],
            "failed": r["non_2xx"], "socket_errors": r["socket_errors"]}


def depth_costs(bff, token, query, depths, limit=20, repeat=3):
    """Median time of the page at each depth, reached by following page tokens."""
    costs = {}
    for _ in range(repeat):
        token_param, page = None, 1
        while page <= max(depths):
            q = dict(query, limit=limit)
            if token_param:
                q["page_token"] = token_param
            url = f"{bff}/api/v2/videos?{urllib.parse.urlencode(q)}"
            start = time.perf_counter()
            body = call("GET", url, token=token)[2]
            elapsed = (time.perf_counter() - start) * 1000
            if page in depths:
                costs.setdefault(page, []).append(elapsed)
            token_param = body.get("next_page_token")
            if not token_param:
                break
            page += 1
    return {str(d): round(statistics.median(v), 2) for d, v in sorted(costs.items())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("bff")
    ap.add_argument("database_url")
    ap.add_argument("--videos", type=int, default=1_000_000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--schema", default="catalog")
    ap.add_argument("--depths", default="1,10,100,500",
                    help="pages at which to time a page, following page tokens")
    a = ap.parse_args()
    have = int(psql(a.database_url, f"SELECT count(*) FROM {a.schema}.videos"))
    start = time.monotonic()
    if have < a.videos:
        log(f"generating {a.videos - have} videos")
        seed(a.database_url, a.schema, a.videos - have, first=have + 1)
    seeded_s = time.monotonic() - start
    total = int(psql(a.database_url, f"SELECT count(*) FROM {a.schema}.videos"))
    token = benchlib.sign_up(a.bff, "catalog")
    # Words by how many titles hold them: common, middling and rare queries.
    common, middling, rare = WORDS[:5], WORDS[60:65], WORDS[-5:]
    tags = TAGS[:5] + TAGS[30:35]
    owner = psql(a.database_url, f"SELECT md5('owner7')::uuid")
    q = lambda **kw: "/api/v2/videos?" + urllib.parse.urlencode(kw)
    scenarios = {
        "newest, first page": [q(limit=20)],
        "full text, common words": [q(query=w, limit=20) for w in common],
        "full text, middling words": [q(query=w, limit=20) for w in middling],
        "full text, rare words": [q(query=w, limit=20) for w in rare],
        "full text, two words": [q(query=f"{a_} {b}", limit=20)
                                 for a_, b in zip(common + middling, middling + rare)],
        "tag filter": [q(tags=t, limit=20) for t in tags],
        "two tags": [q(tags=f"{t},{u}", limit=20) for t, u in zip(tags, reversed(tags))],
        "full text and a tag": [q(query=w, tags=t, limit=20) for w, t in zip(middling, tags)],
        "owner filter": [q(owner_id=owner, limit=20)],
    }
    results = {}
    for name, paths in scenarios.items():
        log(f"{name} ({a.duration} s)")
        results[name] = wrk(a.bff, token, paths, a.duration)
    log("page cost by depth")
    depths = [int(d) for d in a.depths.split(",")]
    pagination = {
        "newest": depth_costs(a.bff, token, {}, depths),
        f"relevance, query {middling[0]!r}": depth_costs(a.bff, token, {"query": middling[0]},
                                                          depths),
        f"tag {tags[0]!r}": depth_costs(a.bff, token, {"tags": tags[0]}, depths),
    }
    with open(os.path.join(a.out, "catalog.json"), "w") as f:
        json.dump({"videos": total, "seed_seconds": round(seeded_s, 1),
                   "search": results, "pagination": pagination, "page_size": 20}, f, indent=2)
    worst = max(r["p99_ms"] or 0 for r in results.values())
    log(f"{total} videos; worst p99 {worst:.1f} ms")


if __name__ == "__main__":
    main()
