# @title Install pipeline_lib (Colab / Kaggle) { display-mode: "form" }
# Leave REPO_URL empty and upload the repository .zip (or a built .whl) in the Files pane, or set
# it to your copy's git URL. Rerun to update. torch is never reinstalled; locally this does nothing.
REPO_URL = ""  # @param {type:"string"}
import glob, importlib.metadata, os, subprocess, sys, tempfile, zipfile
WATCH = ("numpy", "ipywidgets", "transformers", "diffusers", "accelerate", "cv2", "PIL", "torch")
BEFORE = {m: getattr(sys.modules[m], "__version__", "?") for m in WATCH if m in sys.modules}
HOST = "colab" if "google.colab" in sys.modules else "kaggle" if "KAGGLE_KERNEL_RUN_TYPE" in os.environ else ""
BASE = os.environ.get("PIPELINE_LIB_INSTALL_DIR") or {"colab": "/content", "kaggle": "/kaggle/working"}.get(HOST)
HELP = ("pipeline_lib is not installed: set REPO_URL above to your copy's git URL and run this cell again,\n"
        f"or upload the repository as a .zip (or a .whl) to {BASE} in the Files pane and run this cell again.")


def _run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def _opencv_pin():
    # Every OpenCV wheel writes the one cv2 folder: pin ours to the runtime's own OpenCV 4 contrib build,
    # or pip's newest 4.x silently replaces the cv2 that Colab/Kaggle ship (their pins look unchanged).
    for name in ("opencv-contrib-python", "opencv-contrib-python-headless"):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if int(version.split(".")[0]) < 5:
            return f"opencv-contrib-python-headless=={version}"
    return None


def _pip_install(src):
    pin, extra = _opencv_pin(), []
    if pin:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(pin + "\n")
        extra = ["-c", f.name]
    return _run(sys.executable, "-m", "pip", "install", "-q", src, *extra)


def _source():
    dest = os.path.join(BASE, "pipeline_lib")
    if REPO_URL.strip():
        git = (_run("git", "-C", dest, "pull", "--ff-only") if os.path.isdir(os.path.join(dest, ".git"))
               else _run("git", "clone", "--depth", "1", REPO_URL.strip(), dest))
        return dest if git.returncode == 0 else None
    wheels = sorted(glob.glob(os.path.join(BASE, "*.whl")) + glob.glob("/kaggle/input/*/*.whl"))
    zips = sorted(glob.glob(os.path.join(BASE, "*pipeline_lib*.zip")) + glob.glob("/kaggle/input/*/*pipeline_lib*.zip"))
    if wheels:
        return wheels[-1]
    if zips:
        with zipfile.ZipFile(zips[-1]) as z:
            z.extractall(os.path.join(BASE, "pipeline_lib_zip"))
        found = glob.glob(os.path.join(BASE, "pipeline_lib_zip", "**", "pyproject.toml"), recursive=True)
        return os.path.dirname(sorted(found, key=len)[0]) if found else None
    return dest if os.path.isfile(os.path.join(dest, "pyproject.toml")) else None


if BASE and not os.environ.get("PIPELINE_LIB_NOTEBOOK_TEST"):
    SRC = _source()
    PIP = _pip_install(SRC) if SRC else None
    if PIP is None or PIP.returncode != 0:
        print(HELP if PIP is None else HELP + "\n(pip said: " + PIP.stderr.strip().splitlines()[-1] + ")")
    else:
        from pipeline_lib import notebook as nb
        nb.print_restart_advice(BEFORE)
