#!/usr/bin/env bash
# Downloads, into .whl/ (git-ignored through .git/info/exclude), the wheels the GPU machine of a
# device session lacks for the DARE training step and the serving benchmark (issue 15 rows (a),
# (b)); benchmarks/gpu_session.sh installs them there into /tmp/site. Run once here, in the repo
# root, with network access (PyPI). Versions are requirements.lock's; the GPU image runs Python 3.12
# (x86_64), so the compiled ones are its cp312 manylinux builds.
#
# What the GPU image (/work/.library/device/KINDS.md, "Python packages already there") lacks on
# those import paths (recsys.models + recsys.train + recsys.tasks.ctr, serving.app + serving.models
# + serving.store, benchmarks.serving, checked with a sys.modules diff):
#   pydantic, pydantic-core, annotated-types, typing-inspection   configs (recsys.config.StrictModel)
#   typing-extensions   pydantic-core needs >= 4.16.0; gpu_session.sh installs it only when the
#                       image's is older (its version is not recorded in KINDS.md)
#   fastapi, starlette, opentelemetry-api (fastapi 0.165 imports it), fastapi-offline   the app
#   uvicorn, httptools  the server (httptools: the HTTP parser of the CPU rows; uvloop is there)
#   orjson              serving responses;  redis   serving.store imports its Redis backend
# Already there and not carried: torch, triton, numpy, pyarrow, pyyaml, safetensors, tqdm, anyio,
# h11, click, httpx, annotated-doc, prometheus-client, uvloop.
# Not carried, no longer imported on these paths: polars (54 MiB runtime wheel; recsys.data.layout
# imports it in its writers only) and faiss (recsys.retrieval imports it when an index is used).
#
# faiss GPU (issue 15 row (d)) is NOT carried: the only GPU wheel on PyPI is faiss-gpu-cu12
# (1.14.1.post1, 46.2 MiB for cp312) and it links the CUDA 12 libraries, needing
# nvidia-cublas-cu12 (554 MiB at 12.9; >= 12.1.3.1) and nvidia-cuda-runtime-cu12 (3.3 MiB); the
# image has CUDA 13 libraries only (torch cu130, cupy-cuda13x), and there is no faiss-gpu-cu13
# project. Far over the 64 MiB a device call carries, so there is no faiss GPU row.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exclude=$(git rev-parse --git-path info/exclude)
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
mkdir -p .whl
rm -f .whl/*.whl  # one version of each: two of a package stop the whole install there
WHEELS=(
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing_extensions==4.16.0
  fastapi==0.165.0 starlette==1.10.0 opentelemetry-api==1.45.2 fastapi-offline==1.7.7
  uvicorn==0.54.0 httptools==0.9.0 orjson==3.13.0 redis==8.1.0
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
n=$(ls .whl/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: expected ${#WHEELS[@]} wheels, found $n in .whl" >&2; exit 1
fi
ls -1 .whl
bytes=$(cat .whl/*.whl | wc -c)
echo "gpu_wheels: $n wheels, $(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }') MiB in .whl" \
  "(a device call carries at most 64 MiB with the repository, about 3 MiB)"
