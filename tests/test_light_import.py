"""The UI process must start without the training stack."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes")


def test_import_app_does_not_import_the_training_stack(tmp_path):
    code = ("import sys, app; heavy = [m for m in %r if m in sys.modules]; print(','.join(heavy))" % (HEAVY,))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"STUDIO_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing app loaded {out.stdout.strip()}"


def test_building_the_ui_does_not_import_the_training_stack(tmp_path):
    code = ("import sys, app; app.build_ui(); heavy = [m for m in %r if m in sys.modules]; print(','.join(heavy))"
            % (HEAVY,))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env={"STUDIO_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1:] in ([""], []), f"building the UI loaded {out.stdout.strip()}"


# ---- at run time: the handlers that could reach for a model run in a UI process without torch -----------------

UI_PROCESS = """
import json, sys
args = json.loads(sys.argv[1])
import app  # what `studio serve` imports, then the tabs' handlers
from studio.ui import adapters_tab, datasets_tab, train_tab
from studio.models import bundled_dir, is_model_folder
from studio.spec import JobSpec

out = {"imports": [adapters_tab.on_import(files, name, "SmolLM2-135M-Instruct")[0] for name, files in args["imports"]],
       "converted": is_model_folder(bundled_dir())}
if args.get("dataset"):
    preview = datasets_tab.check_upload(args["dataset"], "auto", False, "SmolLM2-135M-Instruct", 48)
    out["preview"] = preview[2]
    out["segments"] = (preview[3] or {}).get("value")
    datasets_tab.add_upload(args["dataset"], "auto", False, "ids")
    out["warning"] = train_tab.start_warnings(JobSpec(dataset="ids", max_length=16))
out["heavy"] = [m for m in %r if m in sys.modules]
out["mapped"] = sorted({line.split()[-1] for line in open("/proc/self/maps")
                        if "libtorch" in line or "/torch/" in line})
print(json.dumps(out))
""" % (HEAVY,)


def _ui_process(home: Path, args: dict, **env: str) -> dict:
    """Run the UI's handlers (UI_PROCESS) in a fresh process with its own data directory; what they returned, the
    training-stack modules it imported and the torch libraries it mapped."""
    import json

    from workerproc import worker_env

    run = subprocess.run([sys.executable, "-c", UI_PROCESS, json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=worker_env(home, **env))
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _zipped(folder: Path) -> str:
    import shutil

    return shutil.make_archive(str(folder), "zip", folder)


def test_importing_an_adapter_on_a_fresh_data_directory_maps_no_torch(tmp_path, tiny_model_dir):
    """adapters_tab.on_import -> import_adapter -> check_against_base reads the bundled model's shapes from its GGUF
    before any worker has converted it: a fitting adapter is imported, one of another model refused, and the UI
    process neither converts the model nor loads torch."""
    from adapter_fixtures import make_adapter
    from browser import ensure_bundled_model

    fits = _zipped(make_adapter(ensure_bundled_model(), tmp_path / "smol-adapter", r=4))
    other = _zipped(make_adapter(tiny_model_dir, tmp_path / "tiny-adapter", r=4))
    out = _ui_process(tmp_path / "home", {"imports": [["mine", [fits]], ["theirs", [other]]]})
    assert out["imports"][0].startswith("Imported **mine**"), out["imports"][0]
    assert "trained on another model" in out["imports"][1] or "does not have" in out["imports"][1], out["imports"][1]
    assert not out["converted"], "the UI process converted the bundled model"
    assert out["heavy"] == [] and out["mapped"] == [], f"the UI process loaded {out['heavy'] or out['mapped']}"


def test_the_dataset_preview_and_the_train_warnings_map_no_torch(tmp_path):
    """With the bundled model on disk, the Datasets tab's preview (highlighted row, token counts) and the Train
    tab's max-length warning tokenise through studio.tokenizer: the figures are there and no torch is mapped."""
    from browser import SHARED_MODELS, ensure_bundled_model
    from identity_data import write

    ensure_bundled_model()
    out = _ui_process(tmp_path / "home", {"imports": [], "dataset": str(write(tmp_path / "id.jsonl"))},
                      STUDIO_MODELS_DIR=str(SHARED_MODELS))
    assert "**Tokens at max length 48:**" in out["preview"] and "trained" in out["preview"], out["preview"]
    assert any(flag == "trained" for _, flag in out["segments"]), out["segments"]
    assert "of the trained tokens of 'ids' lie past max length 16" in out["warning"], out["warning"]
    assert out["heavy"] == [] and out["mapped"] == [], f"the UI process loaded {out['heavy'] or out['mapped']}"


def test_the_gguf_tensor_table_names_the_converted_folders_weights():
    """What check_against_base reads before the conversion (the GGUF) is what it reads after (the safetensors)."""
    from browser import ensure_bundled_model
    from studio import models, safetensors_header

    folder = ensure_bundled_model()
    converted = {k.removesuffix(".weight"): tuple(v["shape"]) for k, v in safetensors_header.read_folder(folder).items()
                 if k.endswith(".weight") and len(v["shape"]) == 2}
    assert models.bundled_weight_shapes() == converted
