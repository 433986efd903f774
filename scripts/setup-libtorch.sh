#!/usr/bin/env bash
# A CPU libtorch for `fer-train --features tch` (burn-tch / tch 0.22, which wants PyTorch 2.9.0),
# built only from PyPI wheels, into .libtorch/ (gitignored, ~600 MB):
#   - torch 2.9.0's headers and CPU libraries (libtorch_cpu, libc10, libgomp), without its 1 GB
#     CUDA library: the wheel's libtorch.so only ties libtorch_cpu to libtorch_cuda, so an empty
#     libtorch.so stands in for it;
#   - libcudart and libcupti (CUDA 12.8 wheels, 11 MB), which libtorch_cpu.so links to even though
#     nothing calls them on the CPU.
# Then:
#   export LIBTORCH=$PWD/.libtorch LD_LIBRARY_PATH=$PWD/.libtorch/lib
#   cargo build --release -p fer-train --features tch
#   target/release/fer-train train --backend tch --config ... --run ...
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.libtorch
if [ -f "$dest/build-version" ] && [ "$(cat "$dest/build-version")" = "2.9.0" ]; then
    echo "libtorch 2.9.0 (CPU) already in $dest"
    exit 0
fi
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download -q --no-deps -d "$wheels" \
    torch==2.9.0 nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-cupti-cu12==12.8.90
rm -rf "$dest" && mkdir -p "$dest/lib"
python3 - "$wheels" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, dest = sys.argv[1], sys.argv[2]
cpu_libs = {"libc10.so", "libtorch_cpu.so", "libgomp.so.1", "libtorch_global_deps.so"}
(torch_whl,) = glob.glob(f"{wheels}/torch-*.whl")
with zipfile.ZipFile(torch_whl) as z:
    for name in z.namelist():
        if name.endswith("/"):
            continue
        if name.startswith("torch/include/"):
            target = os.path.join(dest, name[len("torch/"):])
        elif name.startswith("torch/lib/") and os.path.basename(name) in cpu_libs:
            target = os.path.join(dest, "lib", os.path.basename(name))
        else:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(name) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
for whl in glob.glob(f"{wheels}/nvidia_*.whl"):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if os.path.basename(name) in ("libcudart.so.12", "libcupti.so.12"):
                with z.open(name) as src, open(os.path.join(dest, "lib", os.path.basename(name)), "wb") as out:
                    shutil.copyfileobj(src, out)
PY
# The empty stand-in for the wheel's libtorch.so (see above).
cc -shared -o "$dest/lib/libtorch.so" -x c /dev/null
echo 2.9.0 > "$dest/build-version"
du -sh "$dest"
echo "export LIBTORCH=$PWD/$dest LD_LIBRARY_PATH=$PWD/$dest/lib"
