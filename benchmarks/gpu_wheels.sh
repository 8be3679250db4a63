#!/usr/bin/env bash
# Fetch what benchmarks/gpu_device.sh needs on a GPU machine that reaches no package index, and check it,
# here, from the repo root of the checkout whose working tree the device receives:
#
#   benchmarks/gpu_wheels.sh            # then: the device call with carry [".whl"] (docs/gpu.md)
#
# 1. the wheels of benchmarks/gpu_wheels.txt, for CPython 3.12 on manylinux x86-64, into .whl/ (ignored by
#    git: .gitignore lists /.whl/);
# 2. the walkthrough's data (HH-RLHF harmless-base test split, SycophancyEval's answer sample, licences) from
#    ${SHARED_DATA:-../shared/data} into .whl/data/, the layout gpu_walkthrough.py reads;
# 3. the check: `pip install --dry-run --no-index` for Python 3.12 of the pinned wheels and pmopt itself
#    against stub wheels of the image's packages at their versions (benchmarks/gpu_image.txt): it fails if a
#    requirement is missing or outside the versions there, or if a pinned wheel shadows an image package;
# 4. the sizes: .whl/ and the tracked files together must stay under the device's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
target=(--python-version 3.12 --implementation cp "${platforms[@]}" --only-binary=:all:)
pins=$(grep -v '^#' benchmarks/gpu_wheels.txt | sed 's/ *#.*//' | grep .)

git check-ignore -q .whl/x.whl || { echo "gpu_wheels.sh: .whl/ is not ignored by git (.gitignore: /.whl/)" >&2; exit 2; }
rm -rf .whl
mkdir -p .whl
# shellcheck disable=SC2086  # one argument per pin
python3 -m pip download -q --no-deps "${target[@]}" -d .whl $pins

shared="${SHARED_DATA:-../shared/data}"
for f in hh-rlhf/harmless-base/test.jsonl.gz hh-rlhf/LICENSE sycophancy-eval/answer.sample.jsonl; do
  mkdir -p ".whl/data/$(dirname "$f")"
  cp "$shared/$f" ".whl/data/$f"
done

check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
python3 -m pip wheel -q --no-deps --no-build-isolation -w "$check/pmopt" . >"$check/wheel.log" 2>&1 \
  || { cat "$check/wheel.log" >&2; exit 1; }
python3 - "$check/image" <<'EOF'
"""A metadata-only wheel per versioned line of benchmarks/gpu_image.txt: what pip may take as installed."""
import re
import sys
import zipfile
from pathlib import Path

out = Path(sys.argv[1])
out.mkdir()
for line in Path("benchmarks/gpu_image.txt").read_text().splitlines():
    spec = line.split("#")[0].strip()
    if "==" not in spec:
        continue
    name, version = spec.split("==")
    stem = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"
    with zipfile.ZipFile(out / f"{stem}-py3-none-any.whl", "w") as wheel:
        info = f"{stem}.dist-info"
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: gpu_wheels.sh\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
EOF
# shellcheck disable=SC2086
python3 -m pip install -q --dry-run --no-index --ignore-installed "${target[@]}" --target "$check/target" \
  --find-links .whl --find-links "$check/image" --find-links "$check/pmopt" --report "$check/report.json" \
  $pins pmopt
python3 - "$check/report.json" <<'EOF'
"""No pinned wheel shadows an image package, and the resolution picked every wheel of .whl/ from .whl/."""
import json
import re
import sys
from pathlib import Path

def names(path):
    specs = (line.split("#")[0].strip() for line in Path(path).read_text().splitlines())
    return {norm(spec.split("==")[0]) for spec in specs if spec}

norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
shadowing = sorted(names("benchmarks/gpu_wheels.txt") & names("benchmarks/gpu_image.txt"))
if shadowing:
    sys.exit(f"gpu_wheels.sh: pinned packages the image has (carry one only for another version): {shadowing}")
picked = {norm(item["metadata"]["name"]): item["download_info"]["url"]
          for item in json.loads(Path(sys.argv[1]).read_text())["install"]}
wheels = {norm(path.name.split("-")[0]) for path in Path(".whl").glob("*.whl")}
unused = sorted(name for name in wheels if "/.whl/" not in picked.get(name, ""))
if unused:
    sys.exit(f"gpu_wheels.sh: wheels of .whl/ the resolution did not take from there: {unused}")
print(f"gpu_wheels.sh: resolved for Python 3.12: {len(wheels)} carried wheels ({', '.join(sorted(wheels))}), "
      f"pmopt, and {len(picked) - len(wheels) - 1} packages of the image")
EOF

wheels_kib=$(du -sk .whl | cut -f1)
tracked_kib=$(git ls-files -z | du -ck --files0-from=- | tail -1 | cut -f1)
echo "gpu_wheels.sh: .whl/ $((wheels_kib / 1024)).$((wheels_kib % 1024 * 10 / 1024)) MiB" \
     "+ tracked files $((tracked_kib / 1024)).$((tracked_kib % 1024 * 10 / 1024)) MiB" \
     "= $(((wheels_kib + tracked_kib) / 1024)) MiB of the device's 64 MiB"
ls -l .whl/*.whl | awk '{printf "  %8.1f KiB  %s\n", $5 / 1024, $9}'
if [ $((wheels_kib + tracked_kib)) -ge $((64 * 1024)) ]; then
  echo "gpu_wheels.sh: over the 64 MiB the device takes" >&2
  exit 1
fi
