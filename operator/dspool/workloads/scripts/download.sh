set -euo pipefail
echo "downloading ${MODEL_URI} into ${MODEL_DIR}"
case "${MODEL_URI}" in
  hf://*)
    pip install --quiet --no-cache-dir 'huggingface_hub>=0.23'
    python3 - <<'PY'
import os
from huggingface_hub import snapshot_download
snapshot_download(repo_id=os.environ["MODEL_URI"][len("hf://"):], local_dir=os.environ["MODEL_DIR"])
PY
    ;;
  modelscope://*)
    pip install --quiet --no-cache-dir modelscope
    python3 - <<'PY'
import os
from modelscope import snapshot_download
snapshot_download(os.environ["MODEL_URI"][len("modelscope://"):], local_dir=os.environ["MODEL_DIR"])
PY
    ;;
  s3://*)
    pip install --quiet --no-cache-dir awscli
    aws s3 sync "${MODEL_URI}" "${MODEL_DIR}"
    ;;
  http://*|https://*)
    python3 - <<'PY'
import os, tarfile, urllib.request
with urllib.request.urlopen(os.environ["MODEL_URI"]) as response:
    tarfile.open(fileobj=response, mode="r|*").extractall(os.environ["MODEL_DIR"], filter="data")
PY
    ;;
  *) echo "unsupported model URI ${MODEL_URI}" >&2; exit 2 ;;
esac
chmod -R u=rwX,g=rX,o= "${MODEL_DIR}"
echo "download complete"
