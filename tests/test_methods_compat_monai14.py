"""The ViT methods on monai 1.4.0 (MONAI Label's environment, in a subprocess): they train a step, leave no
parameter without gradient, and have exactly the state-dict keys they have on the current monai, so
checkpoints move between the two. Skipped when that environment is absent; marked slow (~20-100 s: two interpreters)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from monai14 import PYTHON

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.monailabel, pytest.mark.slow]

SCRIPT = r"""
import json, torch, monai
from dissect_monai.networks.dino import DINO
from dissect_monai.networks.dissect import DiSSECT, DiSSECTEmbedder
from dissect_monai.networks.ijepa import IJEPA
from dissect_monai.networks.mae import MAE
from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid
torch.manual_seed(0)
out = {"monai": monai.__version__}
def vit(**kw):
    return ViTEncoder(img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=3, num_heads=2, **kw)
dissect_vit = DiSSECT(DiSSECTEmbedder(ViTTokenPyramid(vit(class_token=False)), scales=(0, 1, 2),
                                      quantizer_args={"num_codes": 16, "code_dims": 8}), hidden_dim=64)
for name, model in [("mae", MAE(vit())), ("ijepa", IJEPA(vit(class_token=False))), ("dino", DINO(vit(), out_dim=64)),
                    ("dissect_vit", dissect_vit)]:
    x = torch.rand(4, 1, 32, 32)
    loss = model(x, x.flip(-1))["loss"]
    loss.backward()
    out[name] = {"finite": bool(torch.isfinite(loss)), "keys": sorted(model.state_dict()),
                 "unused": [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]}
print(json.dumps(out))
"""


def _run(python: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not PYTHON.is_file(), reason=f"MONAI Label environment not found at {PYTHON}")
def test_vit_methods_same_keys_on_monai_14_and_current():
    import sys

    old, new = _run(PYTHON), _run(Path(sys.executable))
    assert old["monai"].startswith("1.4") and old["monai"] != new["monai"]
    for name in ("mae", "ijepa", "dino", "dissect_vit"):
        assert old[name]["finite"] and new[name]["finite"], name
        assert old[name]["unused"] == [] and new[name]["unused"] == [], name
        assert old[name]["keys"] == new[name]["keys"], name
