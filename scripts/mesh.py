#!/usr/bin/env python3
"""Envoy sidecars for the Tertulia mesh: certificates and bootstrap configs.

Every service instance runs behind its own Envoy 1.40 sidecar:

- inbound (mesh port): mutual TLS, only certificates of the mesh's CA; forwards gRPC to
  the service on loopback;
- outbound (one loopback port per upstream service): the service calls plain h2c on
  127.0.0.1, the sidecar carries the call to the upstream's sidecars over mutual TLS, with
  per-route timeouts, retries only for idempotent methods, outlier detection, circuit
  breaking and active gRPC health checks;
- edge (the gateway's public HTTP port, the media origin): plain HTTP/1.1 and WebSocket in
  front of the service's HTTP listener;
- access logs as JSON lines carrying the W3C `traceparent` and the request id.

Usage:
  mesh.py render SPEC.json OUTDIR   certificates (kept if present) and one config per sidecar
  mesh.py compose [--check]         (re)writes compose/envoy/ from the deployment topology
  mesh.py validate ENVOY SCRATCH    envoy --mode validate on every config in compose/envoy/
  mesh.py certs DIR NAME...         a CA and one certificate per service (kept if present)
  mesh.py local OUTDIR              the local stack's sidecars (TERTULIA_MESH=1 make up), with
                                    one env file per service overriding its listeners and upstreams

SPEC.json: {"sidecars": [{"name", "admin", "access_log"?, "certs"?,
                          "inbound"?: {"listen", "app"},
                          "edge"?: {"listen", "app", "kind": "gateway"|"origin"},
                          "outbound"?: {"<service>": {"listen", "endpoints": ["host:port"]}}}]}
Only the Python standard library and the openssl command are needed.
"""

import ipaddress
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Methods safe to retry: reads, and writes made idempotent by the API (client_msg_id keys,
# set semantics, monotonic read marks, TTL refreshes). Everything else (Register, Login,
# Refresh, which rotates tokens, CreateConversation, AddMember, EditMessage, CreateVideo,
# CreateUpload, ...) is never retried by the mesh.
IDEMPOTENT = (
    r"^/[^/]+/(Get[A-Za-z]*|List[A-Za-z]*|Search[A-Za-z]*|BatchGet[A-Za-z]*|Check|Heartbeat"
    r"|MarkRead|SendMessage|AddReaction|RemoveReaction|DeleteMessage|DeleteMedia|Disconnect"
    r"|AddContact|RemoveContact)$"
)
# Streams: no overall timeout (the app's own drain and idle rules apply).
STREAMING = r"^/(grpc\.health\.v1\.Health/Watch|grpc\.reflection\.v1\.ServerReflection/.*)$"
READ_TIMEOUT = "5s"
WRITE_TIMEOUT = "10s"
# Gateway paths that hold a connection open (WebSocket, SSE, long poll).
LONG_LIVED = r"^/api/v[0-9]+/(ws|events|poll)$"

ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    "route": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS_NUMBER%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream": "%UPSTREAM_HOST%",
    "peer": "%DOWNSTREAM_PEER_URI_SAN%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
}


def spiffe(name):
    return f"spiffe://tertulia/{name}"


def split(address):
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


def socket_address(address):
    host, port = split(address)
    return {"socket_address": {"address": host, "port_value": port}}


def is_ip(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def tls_files(certs, name):
    return {
        "certificate_chain": {"filename": os.path.join(certs, f"{name}.pem")},
        "private_key": {"filename": os.path.join(certs, f"{name}-key.pem")},
    }


def validation(certs, peers):
    context = {"trusted_ca": {"filename": os.path.join(certs, "ca.pem")}}
    if peers:
        context["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": spiffe(peer)}} for peer in peers
        ]
    return context


def access_log(path):
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": path,
                "log_format": {"json_format": ACCESS_LOG_FORMAT},
            },
        }
    ]


def http_manager(stat_prefix, routes, log, upgrades=False, stream_idle="300s"):
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": {
            "name": stat_prefix,
            "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
        "access_log": access_log(log),
        "stream_idle_timeout": stream_idle,
        # Keep the caller's request id; never invent trace headers (the services do).
        "preserve_external_request_id": True,
        "http2_protocol_options": {"max_concurrent_streams": 1024},
    }
    if upgrades:
        manager["upgrade_configs"] = [{"upgrade_type": "websocket"}]
    return manager


def listener(name, address, manager, tls=None):
    chain = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]
    }
    if tls:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": tls,
        }
    return {"name": name, "address": socket_address(address), "filter_chains": [chain]}


def route(name, regex, cluster, timeout, retry=False):
    entry = {
        "name": name,
        "match": {"safe_regex": {"regex": regex}} if regex else {"prefix": "/"},
        "route": {"cluster": cluster, "timeout": timeout},
    }
    if retry:
        entry["route"]["retry_policy"] = {
            # Only failures where the upstream did not act on the call.
            "retry_on": "connect-failure,refused-stream,reset,unavailable,cancelled",
            "num_retries": 2,
            "per_try_timeout": READ_TIMEOUT,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 3,
        }
    return entry


# Upstreams whose calls may carry an affinity key (`x-tertulia-affinity`, a conversation id on
# svc-chat's sends): the sidecar hashes it onto a ring of the instances, as the services'
# own client does without a mesh, so one conversation's sends reach one instance.
AFFINITY = {"chat"}
AFFINITY_HEADER = "x-tertulia-affinity"


def grpc_routes(cluster, affinity=False):
    routes = [
        route("streams", STREAMING, cluster, "0s"),
        route("idempotent", IDEMPOTENT, cluster, READ_TIMEOUT, retry=True),
        route("other", None, cluster, WRITE_TIMEOUT),
    ]
    if affinity:
        for entry in routes:
            entry["route"]["hash_policy"] = [{"header": {"header_name": AFFINITY_HEADER}}]
    return routes


def h2():
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def local_cluster(name, address, http2=True):
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(address)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = h2()
    return cluster


def mesh_cluster(me, upstream, endpoints, certs):
    hosts = [split(e)[0] for e in endpoints]
    return {
        "name": upstream,
        "type": "STATIC" if all(is_ip(h) for h in hosts) else "STRICT_DNS",
        "connect_timeout": "1s",
        # A call without the key goes to a random instance of the ring.
        "lb_policy": "RING_HASH" if upstream in AFFINITY else "LEAST_REQUEST",
        "typed_extension_protocol_options": h2(),
        "load_assignment": {
            "cluster_name": upstream,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": socket_address(e)}} for e in endpoints]}
            ],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": upstream,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [tls_files(certs, me)],
                    "validation_context": validation(certs, [upstream]),
                },
            },
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 1024,
                    "max_pending_requests": 1024,
                    "max_requests": 4096,
                    "max_retries": 16,
                    "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 4},
                }
            ]
        },
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 3,
            "interval": "5s",
            "base_ejection_time": "15s",
            "max_ejection_percent": 50,
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "no_traffic_interval": "2s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        # If every instance looks unhealthy, still route (a NATS outage makes every instance
        # not ready while sends keep working; see docs/runbook.md).
        "common_lb_config": {"healthy_panic_threshold": {"value": 50.0}},
    }


def edge_routes(kind, cluster):
    if kind == "gateway":
        return [
            route("long-lived", LONG_LIVED, cluster, "0s"),
            route("api", None, cluster, "30s"),
        ]
    # The media origin: tus PATCH bodies and large files stream for as long as they flow.
    return [route("origin", None, cluster, "0s")]


def sidecar(spec, certs):
    name = spec["name"]
    log = spec.get("access_log", "/dev/stdout")
    listeners, clusters = [], []
    inbound = spec.get("inbound")
    if inbound:
        tls = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [tls_files(certs, name)],
                # Any service of the mesh may call; nobody without a mesh certificate can.
                "validation_context": validation(certs, []),
            },
        }
        listeners.append(
            listener("inbound", inbound["listen"], http_manager("inbound", grpc_routes("local_app"), log), tls)
        )
        clusters.append(local_cluster("local_app", inbound["app"]))
    edge = spec.get("edge")
    if edge:
        kind = edge.get("kind", "gateway")
        manager = http_manager("edge", edge_routes(kind, "local_http"), log, upgrades=True, stream_idle="600s")
        listeners.append(listener("edge", edge["listen"], manager))
        clusters.append(local_cluster("local_http", edge["app"], http2=False))
    for upstream, target in sorted(spec.get("outbound", {}).items()):
        manager = http_manager(f"outbound_{upstream}", grpc_routes(upstream, upstream in AFFINITY), log)
        listeners.append(listener(f"outbound_{upstream}", target["listen"], manager))
        clusters.append(mesh_cluster(name, upstream, target["endpoints"], certs))
    return {
        "node": {"id": name, "cluster": name},
        "admin": {"address": socket_address(spec["admin"])},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        "overload": {"global_downstream_max_connections": 100000},
                        # The idempotent-method pattern is a longer alternation than RE2's default.
                        "re2.max_program_size.error_level": 1000,
                    },
                }
            ]
        },
    }


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificates(certs, names):
    """A CA and one certificate per service (SAN: DNS name and SPIFFE URI), kept if present."""
    os.makedirs(certs, exist_ok=True)
    ca, ca_key = os.path.join(certs, "ca.pem"), os.path.join(certs, "ca-key.pem")
    if not os.path.exists(ca):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", ca_key, "-out", ca, "-days", "365", "-subj", "/CN=tertulia-mesh-ca")
    for name in names:
        cert, key = os.path.join(certs, f"{name}.pem"), os.path.join(certs, f"{name}-key.pem")
        if os.path.exists(cert):
            continue
        csr = os.path.join(certs, f"{name}.csr")
        ext = os.path.join(certs, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(
                f"subjectAltName=DNS:{name},URI:{spiffe(name)}\n"
                "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n"
            )
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                "-out", cert, "-days", "90", "-extfile", ext)
        os.remove(csr)
        os.remove(ext)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def render(spec_path, out):
    with open(spec_path) as f:
        spec = json.load(f)
    os.makedirs(out, exist_ok=True)
    certs = os.path.join(out, "certs")
    names = [s["name"] for s in spec["sidecars"]]
    certificates(certs, names)
    for s in spec["sidecars"]:
        write_json(os.path.join(out, f"{s['name']}.json"), sidecar(s, s.get("certs", certs)))


# The compose deployment: every service container shares its network namespace with its
# sidecar; services listen on loopback, sidecars on the mesh port (15443) and edges.
MESH_PORT = 15443
COMPOSE_CERTS = "/etc/tertulia/certs"
COMPOSE_APPS = {
    "auth": 50051,
    "chat": 50052,
    "presence": 50053,
    "catalog": 50054,
    "media": 50055,
    "bff": None,
}
COMPOSE_OUTBOUND = {"bff": ["auth", "chat", "presence", "catalog", "media"], "presence": ["auth", "chat"], "catalog": ["media"]}
# The gateway replicas behind the edge load balancer (each with its own sidecar).
GATEWAYS = ["bff-1", "bff-2"]
# Loopback port of each outbound listener (the same in every container).
OUTBOUND_PORT = {"auth": 15051, "chat": 15052, "presence": 15053, "catalog": 15054, "media": 15055}


def compose_specs():
    specs = []
    for name, port in COMPOSE_APPS.items():
        spec = {"name": name, "admin": "127.0.0.1:9901", "access_log": "/dev/stdout"}
        if port:
            spec["inbound"] = {"listen": f"0.0.0.0:{MESH_PORT}", "app": f"127.0.0.1:{port}"}
        if name == "bff":
            spec["edge"] = {"listen": "0.0.0.0:8080", "app": "127.0.0.1:8081", "kind": "gateway"}
        if name == "media":
            spec["edge"] = {"listen": "0.0.0.0:8090", "app": "127.0.0.1:8091", "kind": "origin"}
        spec["outbound"] = {
            up: {"listen": f"127.0.0.1:{OUTBOUND_PORT[up]}", "endpoints": [f"{up}:{MESH_PORT}"]}
            for up in COMPOSE_OUTBOUND.get(name, [])
        }
        specs.append(spec)
    return specs


def compose_edge():
    """The load balancer in front of the gateway replicas (WebSocket-aware, /readyz checked)."""
    cluster = {
        "name": "gateways",
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": "gateways",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": socket_address(f"{g}:8080")}} for g in GATEWAYS]}
            ],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "http_health_check": {"path": "/readyz"},
            }
        ],
        "outlier_detection": {"consecutive_5xx": 5, "interval": "5s", "base_ejection_time": "15s"},
        "common_lb_config": {"healthy_panic_threshold": {"value": 50.0}},
    }
    manager = http_manager("edge", edge_routes("gateway", "gateways"), "/dev/stdout", upgrades=True, stream_idle="600s")
    return {
        "node": {"id": "edge", "cluster": "edge"},
        "admin": {"address": socket_address("127.0.0.1:9901")},
        "static_resources": {"listeners": [listener("edge", "0.0.0.0:80", manager)], "clusters": [cluster]},
    }


def compose(check):
    out = os.path.join(ROOT, "compose", "envoy")
    wanted = {f"{s['name']}.json": sidecar(s, COMPOSE_CERTS) for s in compose_specs()}
    wanted["edge.json"] = compose_edge()
    stale = []
    for file, config in wanted.items():
        path = os.path.join(out, file)
        text = json.dumps(config, indent=2) + "\n"
        current = open(path).read() if os.path.exists(path) else None
        if current != text:
            stale.append(file)
            if not check:
                os.makedirs(out, exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    if check and stale:
        sys.exit(f"compose/envoy is out of date ({', '.join(stale)}): run scripts/mesh.py compose")


def validate(envoy, scratch):
    """`envoy --mode validate` on every config in compose/envoy/. Envoy opens the certificate
    files while validating, so the mounted path is pointed at certificates made for the run."""
    certs = os.path.join(scratch, "certs")
    certificates(certs, list(COMPOSE_APPS))
    folder = os.path.join(ROOT, "compose", "envoy")
    failed = []
    for file in sorted(os.listdir(folder)):
        with open(os.path.join(folder, file)) as f:
            text = f.read().replace(COMPOSE_CERTS, certs)
        copy = os.path.join(scratch, file)
        with open(copy, "w") as f:
            f.write(text)
        result = subprocess.run(
            [envoy, "--mode", "validate", "--disable-hot-restart", "-l", "error", "-c", copy],
            capture_output=True,
            text=True,
        )
        status = "ok" if result.returncode == 0 else "INVALID"
        print(f"envoy --mode validate compose/envoy/{file}: {status}")
        if result.returncode != 0:
            failed.append(file)
            print(result.stdout + result.stderr, file=sys.stderr)
    if failed:
        sys.exit(f"invalid Envoy configs: {', '.join(failed)}")


# The local stack (`TERTULIA_MESH=1 make up`): services keep their usual gRPC ports on
# loopback; sidecars take the mesh ports (1545x), per-caller outbound ports (150xx for the
# gateway, 151xx for presence, 152xx for catalog) and the public ports 8080 and 8090, in front
# of the gateway and the origin moved to 18080 and 18090.
LOCAL_GRPC = {"auth": 50051, "chat": 50052, "presence": 50053, "catalog": 50054, "media": 50055}
LOCAL_CALLERS = {"bff": (15000, COMPOSE_OUTBOUND["bff"]), "presence": (15100, COMPOSE_OUTBOUND["presence"]),
                 "catalog": (15200, COMPOSE_OUTBOUND["catalog"])}


def local(out):
    """Configs, certificates and one env file per service (overrides of its listeners and
    upstream URLs) for the local stack."""
    inbound = {name: 15400 + port % 100 for name, port in LOCAL_GRPC.items()}
    sidecars, env = [], {}
    for index, name in enumerate(list(LOCAL_GRPC) + ["bff"]):
        spec = {"name": name, "admin": f"127.0.0.1:{15901 + index}", "access_log": os.path.join(out, f"{name}.access.log")}
        if name in LOCAL_GRPC:
            spec["inbound"] = {"listen": f"127.0.0.1:{inbound[name]}", "app": f"127.0.0.1:{LOCAL_GRPC[name]}"}
        lines = []
        if name in LOCAL_CALLERS:
            base, upstreams = LOCAL_CALLERS[name]
            spec["outbound"] = {}
            for up in upstreams:
                port = base + LOCAL_GRPC[up] % 100
                spec["outbound"][up] = {"listen": f"127.0.0.1:{port}", "endpoints": [f"127.0.0.1:{inbound[up]}"]}
                lines.append(f"TERTULIA_{name.upper()}_{up.upper()}__URL=http://127.0.0.1:{port}")
        if name == "bff":
            spec["edge"] = {"listen": "127.0.0.1:8080", "app": "127.0.0.1:18080", "kind": "gateway"}
            lines.append("TERTULIA_BFF_HTTP__LISTEN=127.0.0.1:18080")
        if name == "media":
            spec["edge"] = {"listen": "127.0.0.1:8090", "app": "127.0.0.1:18090", "kind": "origin"}
            lines.append("TERTULIA_MEDIA_HTTP_LISTEN=127.0.0.1:18090")
        sidecars.append(spec)
        env[name] = lines
    os.makedirs(out, exist_ok=True)
    spec_path = os.path.join(out, "spec.json")
    write_json(spec_path, {"sidecars": sidecars})
    render(spec_path, out)
    for name, lines in env.items():
        with open(os.path.join(out, f"{name}.env"), "w") as f:
            f.write("".join(line + "\n" for line in lines))


def main(argv):
    if len(argv) == 3 and argv[0] == "render":
        render(argv[1], argv[2])
    elif argv[:1] == ["compose"] and argv[1:] in ([], ["--check"]):
        compose(argv[1:] == ["--check"])
    elif len(argv) == 2 and argv[0] == "local":
        local(argv[1])
    elif len(argv) >= 3 and argv[0] == "certs":
        certificates(argv[1], argv[2:])
    elif len(argv) == 3 and argv[0] == "validate":
        validate(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
