#!/usr/bin/env python3
"""A CycloneDX 1.5 SBOM (JSON) of what the kfr binary is built from, without network access.

Reads `cargo metadata` (offline, --locked: exactly the committed Cargo.lock) for the crates the
binary links (normal dependencies, followed from kfr for the target platform; not dev- or
build-only ones), and Cargo.lock for each crate's registry checksum (SHA-256 of the .crate file).

Usage: deploy/sbom.py [OUTPUT]   (default: stdout). Run from anywhere inside the repository.
SOURCE_DATE_EPOCH, when set, is the SBOM's timestamp, so a rebuild gives the same file.
"""

import datetime
import json
import os
import subprocess
import sys
import tomllib
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cargo_metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--offline",
         "--filter-platform", host_triple()],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def host_triple():
    out = subprocess.run(["rustc", "-vV"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("host: "):
            return line[len("host: "):]
    raise SystemExit("sbom.py: rustc -vV names no host")


def lock_checksums():
    with open(os.path.join(ROOT, "Cargo.lock"), "rb") as f:
        lock = tomllib.load(f)
    return {(p["name"], p["version"]): p.get("checksum") for p in lock.get("package", [])}


def shipped(meta):
    """Package ids reachable from the root through normal (non-dev, non-build) dependencies."""
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    return root, seen, nodes


def purl(pkg):
    return f"pkg:cargo/{pkg['name']}@{pkg['version']}"


def main():
    meta = cargo_metadata()
    checksums = lock_checksums()
    packages = {p["id"]: p for p in meta["packages"]}
    root, ids, nodes = shipped(meta)
    top = packages[root]

    def component(pkg, kind):
        c = {
            "type": kind,
            "bom-ref": purl(pkg),
            "name": pkg["name"],
            "version": pkg["version"],
            "purl": purl(pkg),
        }
        if pkg.get("description"):
            c["description"] = " ".join(pkg["description"].split())
        if pkg.get("license"):
            c["licenses"] = [{"expression": pkg["license"]}]
        sha = checksums.get((pkg["name"], pkg["version"]))
        if sha:
            c["hashes"] = [{"alg": "SHA-256", "content": sha}]
        if pkg.get("repository"):
            c["externalReferences"] = [{"type": "vcs", "url": pkg["repository"]}]
        return c

    components = [component(packages[i], "library") for i in sorted(ids - {root}, key=lambda i: purl(packages[i]))]
    dependencies = [
        {
            "ref": purl(packages[i]),
            "dependsOn": sorted(
                purl(packages[d["pkg"]]) for d in nodes[i]["deps"]
                if d["pkg"] in ids and any(k["kind"] is None for k in d["dep_kinds"])
            ),
        }
        for i in sorted(ids, key=lambda i: purl(packages[i]))
    ]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch else datetime.datetime.now(datetime.timezone.utc)
    # The same inputs give the same serial number: it names this set of components.
    serial = uuid.uuid5(uuid.NAMESPACE_URL, "kfr-sbom:" + json.dumps(components, sort_keys=True))
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "deploy/sbom.py"}]},
            "component": component(top, "application"),
        },
        "components": components,
        "dependencies": dependencies,
    }
    text = json.dumps(bom, indent=2, sort_keys=False) + "\n"
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
