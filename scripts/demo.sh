#!/usr/bin/env bash
# Offline demo: a loopback registry, a generated image pushed by occystrap and pulled back.
# Needs the Debian package docker-registry (scripts/test.sh installs it) and occystrap installed.
set -euo pipefail

work=$(mktemp -d)
registry_pid=""
cleanup() {
    [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: 127.0.0.1:$port}
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
python3 - "$port" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 20
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/", timeout=1)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the demo registry did not start; see its log")
        time.sleep(0.1)
PY

echo "== generating a two-layer image as a docker-save tarball"
python3 - "$work/generated.tar" <<'PY'
import hashlib, io, json, sys, tarfile

def layer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()

layers = [layer({"etc/motd": b"hello from occystrap\n"}), layer({"usr/share/demo.txt": b"x" * 100000})]
diff_ids = ["sha256:" + hashlib.sha256(data).hexdigest() for data in layers]
config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["/bin/sh"], "Labels": {"demo": "yes"}},
    "rootfs": {"type": "layers", "diff_ids": diff_ids},
    "history": [{"created_by": "demo layer 1"}, {"created_by": "demo layer 2"}],
}).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
with tarfile.open(sys.argv[1], "w") as out:
    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    add(config_name, config)
    names = []
    for diff_id, data in zip(diff_ids, layers):
        names.append(diff_id[7:] + "/layer.tar")
        add(names[-1], data)
    add("manifest.json", json.dumps(
        [{"Config": config_name, "RepoTags": ["demo:1"], "Layers": names}]).encode())
PY

image="registry://127.0.0.1:$port/demo/hello:1"
echo "== occystrap process tar://generated.tar $image"
occystrap --insecure process "tar://$work/generated.tar" "$image"
echo "== occystrap info $image"
occystrap --insecure info "$image"
echo "== occystrap process $image tar://pulled.tar"
occystrap --insecure process "$image" "tar://$work/pulled.tar"
echo "== occystrap process $image dir://rootfs?expand=true"
occystrap --insecure process "$image" "dir://$work/unpacked?expand=true"
cat "$work/unpacked/rootfs/etc/motd"
