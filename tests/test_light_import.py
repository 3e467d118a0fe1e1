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
