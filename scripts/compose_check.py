#!/usr/bin/env python3
"""Parses compose/compose.yaml with a Compose Specification parser (the `compose-spec`
package, bindings of the Rust `compose_spec` crate: YAML merge keys applied, every key and
value checked against the specification), then checks what a parser alone does not: that
every service named by `depends_on` or `network_mode: service:` exists, and that every file
mounted from the repository is there."""

import os
import sys

from compose_spec import PyOptions

COMPOSE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compose")


def main():
    with open(os.path.join(COMPOSE, "compose.yaml")) as f:
        text = f.read()
    try:
        compose = PyOptions(apply_merge=True).from_yaml(text)
        compose.validate()
    except Exception as error:  # the parser's own message names the key
        sys.exit(f"compose/compose.yaml: {error}")
    spec = compose.to_dict()
    services = spec.get("services", {})
    problems = []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for other in depends if isinstance(depends, (list, dict)) else []:
            if other not in services:
                problems.append(f"{name}: depends_on unknown service {other}")
        mode = service.get("network_mode") or ""
        if mode.startswith("service:") and mode[len("service:"):] not in services:
            problems.append(f"{name}: network_mode names unknown service {mode}")
        for volume in service.get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith("."):
                if not os.path.exists(os.path.normpath(os.path.join(COMPOSE, source))):
                    problems.append(f"{name}: mounts missing file {source}")
    if problems:
        sys.exit("compose/compose.yaml:\n  " + "\n  ".join(problems))
    print(f"compose/compose.yaml: valid ({len(services)} services)")


if __name__ == "__main__":
    main()
