#!/usr/bin/env bash
# Fuzzes the decode+preprocess path and the request parsers with libFuzzer (cargo fuzz):
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
# Seeds come from real FER+ faces read in place from ../shared/data plus hand-made requests; the
# corpus and any crash inputs go to $FUZZ_WORK (default /tmp/fer-fuzz), never into the repository.
# A crash input found here belongs in fuzz/regressions/<target>/, where `cargo test` replays it
# (tests/e2e/fuzz_regressions.rs). Stable Rust runs it through RUSTC_BOOTSTRAP (AddressSanitizer needs
# -Z flags).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
work="${FUZZ_WORK:-/tmp/fer-fuzz}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p "$work"
python3 - "$work" <<'PY'
import base64, io, os, sys, tarfile
work = sys.argv[1]
faces = []
with tarfile.open("../shared/data/ferplus.tar.gz") as archive:
    for member in archive:
        if member.name.startswith("ferplus/valid/") and member.name.endswith(".png"):
            faces.append(archive.extractfile(member).read())
            if len(faces) == 4:
                break
def put(target, name, data):
    os.makedirs(f"{work}/corpus/{target}", exist_ok=True)
    with open(f"{work}/corpus/{target}/{name}", "wb") as f:
        f.write(data)
for i, face in enumerate(faces):
    put("decode_preprocess", f"face{i}.png", face)
    put("request_parsers", f"raw{i}", b"\x00" + face)
face = faces[0]
b64 = base64.b64encode(face)
put("request_parsers", "json", b"\x01" + b'{"images": ["' + b64 + b'", "data:image/png;base64,' + b64 + b'"]}')
part = b'--fuzz-boundary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n' + face + b"\r\n"
put("request_parsers", "multipart", b"\x02" + part + part + b"--fuzz-boundary--\r\n")
put("request_parsers", "content-type", b"\x03multipart/form-data; boundary=fuzz-boundary\n" + part + b"--fuzz-boundary--\r\n")
with open("models/ferplus/1/manifest.json", "rb") as f:
    put("request_parsers", "manifest", b"\x04" + f.read())
put("request_parsers", "policy", b"\x04specific:1,2")
PY
for target in decode_preprocess request_parsers; do
    mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
    echo "== $target: ${seconds}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O -s address "$target" \
        "$work/corpus/$target" "fuzz/regressions/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=262144 \
        -artifact_prefix="$work/artifacts/$target/" -print_final_stats=1 \
        >"$work/$target.log" 2>&1 || echo "!! $target stopped with a finding: see $work/$target.log"
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+ +DONE" "$work/$target.log" || tail -20 "$work/$target.log"
    ls "$work/artifacts/$target"
done
