#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (busybox-static) for `ctr image import`.

Usage: make-busybox-image.py OUT.tar [IMAGE_NAME [CMD_JSON]]
CMD_JSON sets the image's command, e.g. '["sleep", "2147483647"]' for a pause image.
No registry is reachable on our machines; this is the test and demo image.
"""
import gzip, hashlib, io, json, os, sys, tarfile

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "echo", "cat", "sleep", "ls", "ps", "true", "false", "id", "hostname",
           "stty", "seq", "head", "wc", "env", "uname", "tty", "dd", "yes", "kill", "top",
           "mkdir", "ip", "httpd", "nc", "ping"]

def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return "sha256:" + digest, len(data)

def layer():
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"]:
            i = tarfile.TarInfo(d); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
        with open(BUSYBOX, "rb") as f:
            data = f.read()
        i = tarfile.TarInfo("bin/busybox"); i.size = len(data); i.mode = 0o755
        t.addfile(i, io.BytesIO(data))
        for a in APPLETS:
            i = tarfile.TarInfo(f"bin/{a}"); i.type = tarfile.SYMTYPE; i.linkname = "busybox"; t.addfile(i)
        for name, text in [("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")]:
            b = text.encode(); i = tarfile.TarInfo(name); i.size = len(b); i.mode = 0o644
            t.addfile(i, io.BytesIO(b))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), "sha256:" + hashlib.sha256(uncompressed).hexdigest()

def main():
    out = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "docker.io/library/contrast-busybox:test"
    cmd = json.loads(sys.argv[3]) if len(sys.argv) > 3 else ["sh"]
    with tarfile.open(out, "w") as tar:
        gz, diff_id = layer()
        layer_digest, layer_size = blob(tar, gz)
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }).encode()
        config_digest, config_size = blob(tar, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": layer_size}],
        }).encode()
        manifest_digest, manifest_size = blob(tar, manifest)
        index = json.dumps({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": manifest_size,
                           "annotations": {"io.containerd.image.name": name,
                                           "org.opencontainers.image.ref.name": "test"}}],
        }).encode()
        for fname, data in [("index.json", index), ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]:
            i = tarfile.TarInfo(fname); i.size = len(data); tar.addfile(i, io.BytesIO(data))

if __name__ == "__main__":
    main()
