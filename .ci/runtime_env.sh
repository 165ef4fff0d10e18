#!/usr/bin/env bash
# A Colab- or Kaggle-shaped environment: torch already there, the runtime's own pins, then
# pipeline_lib installed the way the notebooks' install cell does (non-editable `pip install`,
# torch untouched). Checks that the install changed none of the pinned packages and that
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
pip install -q .                       # exactly what the install cell runs
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
pip install -q "pytest>=8" "nbmake>=1.5" "ipykernel>=6.20"
export HF_HUB_OFFLINE=1 PIPELINE_LIB_OFFLINE=1 PIPELINE_LIB_NOTEBOOK_TEST=1
# run from a folder outside the checkout, so the installed copy (not the source tree) is imported
work=$(mktemp -d)
cp notebooks/colab_kaggle.ipynb "$work/"
ln -s "$PWD/assets" "$work/assets"
(cd "$work" && python -m pytest -q -p no:cacheprovider -o addopts="" --nbmake --nbmake-timeout=600 colab_kaggle.ipynb)
