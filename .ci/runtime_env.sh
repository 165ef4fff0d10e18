#!/usr/bin/env bash
# A Colab- or Kaggle-shaped environment: torch already there, the runtime's own pins, then
# pipeline_lib installed by the notebooks' install cell itself (from a .zip of this checkout: a
# non-editable `pip install`, torch untouched, OpenCV pinned to the runtime's own). Checks that the
# install changed none of the pinned packages nor the cv2 that imports (which has dnn_superres), and that
# colab_kaggle.ipynb runs in its offline test mode (the app, then upload → upscale → save through
# its own upload handler and buttons: nb.check_upload_upscale_save).
#   .ci/runtime_env.sh colab|kaggle
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:?usage: runtime_env.sh colab|kaggle}
case "$profile" in
  # Colab GPU image, Aug 2026 (Python 3.13 and torch 2.11 there; this machine's Python and CPU torch here)
  colab) pins="ipywidgets==7.7.1 numpy==2.1.3 opencv-python==5.0.0.93 opencv-python-headless==5.0.0.93
               opencv-contrib-python==4.14.0.94 diffusers==0.39.0 transformers==5.15.0 accelerate==1.14.0" ;;
  # Kaggle (built on Colab's May-2026 image): ipywidgets 8.1.5 pinned, the OpenCV 4.13 trio
  kaggle) pins="ipywidgets==8.1.5 numpy==2.1.3 opencv-python==4.13.0.92 opencv-python-headless==4.13.0.92
                opencv-contrib-python==4.13.0.92 diffusers==0.39.0 transformers==5.15.0 accelerate==1.14.0" ;;
  *) echo "unknown profile $profile" >&2; exit 2 ;;
esac
venv=".venv-$profile"
rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
pip install -q torch==2.14.1 torchvision==0.29.1
# shellcheck disable=SC2086
pip install -q $pins
pip freeze > "$venv/before.txt"
cv2_before=$(python -c "import cv2; print(cv2.__version__)")
# the install cell itself (notebooks/tools/install_cell.py, the one source of every notebook's cell),
# installing this checkout from a .zip in its upload folder, as a user's upload on Colab/Kaggle
upload=$(mktemp -d) root=$PWD
git ls-files -co --exclude-standard -z | python -c '
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for p in sys.stdin.read().split("\0"):
        if os.path.isfile(p):
            z.write(p)' "$upload/pipeline_lib.zip"
(cd "$upload" && PIPELINE_LIB_INSTALL_DIR="$upload" python "$root/notebooks/tools/install_cell.py") \
  | tee "$venv/install.txt"
grep -q "^pipeline_lib is installed" "$venv/install.txt" || { echo "install cell failed" >&2; exit 1; }
pip freeze > "$venv/after.txt"
python - "$venv" $pins <<'PY'
import sys
venv, pins = sys.argv[1], sys.argv[2:]
after = {l.split("==")[0].lower(): l.strip().split("==")[1] for l in open(f"{venv}/after.txt")
         if "==" in l}
changed = [f"{p} → {after.get(p.split('==')[0].lower())}" for p in pins
           if after.get(p.split("==")[0].lower()) != p.split("==")[1]]
torch_ok = after.get("torch", "").startswith("2.14.1")
print("runtime pins unchanged" if not changed else f"CHANGED: {changed}", "| torch kept" if torch_ok else "| TORCH CHANGED")
sys.exit(1 if changed or not torch_ok else 0)
PY
# the pins above are pip's records; cv2 is one folder every OpenCV wheel writes, so check what imports
python - "$cv2_before" <<'PY'
import sys
import cv2
ok = cv2.__version__ == sys.argv[1] and hasattr(cv2, "dnn_superres")
print(f"cv2 {sys.argv[1]} → {cv2.__version__}", "| dnn_superres there" if hasattr(cv2, "dnn_superres")
      else "| NO dnn_superres", "" if ok else "| FAILED")
sys.exit(0 if ok else 1)
PY
pip install -q "pytest>=8" "nbmake>=1.5" "ipykernel>=6.20"
export HF_HUB_OFFLINE=1 PIPELINE_LIB_OFFLINE=1 PIPELINE_LIB_NOTEBOOK_TEST=1
# run from a folder outside the checkout, so the installed copy (not the source tree) is imported
work=$(mktemp -d)
cp notebooks/colab_kaggle.ipynb "$work/"
ln -s "$PWD/assets" "$work/assets"
(cd "$work" && python -m pytest -q -p no:cacheprovider -o addopts="" --nbmake --nbmake-timeout=600 colab_kaggle.ipynb)
