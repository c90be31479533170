"""lightly's BYOL, timed on request: the worker ``scripts/benchmark_training.py`` drives in lightly's own venv.

Imports torch, torchvision and lightly only (lightly needs torchvision, which the main environment must
not have). Reads one JSON request per line on stdin and answers one JSON line on stdout:

- ``{"step": S, "steps": N}``: N BYOL steps on the two views at S px of the views file (the step only,
  as in lightly's documentation: one forward per view, ``update_momentum``, ``NegativeCosineSimilarity``,
  SGD; a 1-channel torchvision ResNet-18, fp32 NCHW as lightly runs by default); answers the wall and
  CPU seconds of each step.
- ``{"pipeline": S, "files": [...], "batch": B, "iterations": N, "warmup": W, "num_workers": K}``: lightly's
  BYOL example end to end: ``BYOLTransform`` (its default views at ``input_size=S``) on the images read
  from ``files`` (PIL, RGB, as ``LightlyDataset`` reads them), a shuffled ``DataLoader``, and the stock
  3-channel torchvision ResNet-18 of the example; answers the wall and CPU seconds from the end of the
  W-th iteration to the end of the last.

Usage: ``python scripts/lightly_byol_worker.py VIEWS_FILE --threads T --hidden H --projection P --lr LR``
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import lightly
import torch
import torchvision
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from PIL import Image
from torch import nn


class LightlyBYOL(nn.Module):
    """lightly's documented BYOL model on a torchvision ResNet-18 with ``in_channels`` input channels."""

    def __init__(self, in_channels: int, hidden: int, projection: int) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18()
        if in_channels != 3:
            resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        resnet.fc = nn.Identity()
        self.backbone = resnet
        self.projection_head = BYOLProjectionHead(512, hidden, projection)
        self.prediction_head = BYOLPredictionHead(projection, hidden, projection)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class Trainer:
    """The training step of lightly's BYOL example, with its optimiser and momentum schedule."""

    def __init__(self, in_channels: int, args: argparse.Namespace) -> None:
        torch.manual_seed(0)
        self.model = LightlyBYOL(in_channels, args.hidden, args.projection).train()
        self.criterion = NegativeCosineSimilarity()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=0.9)
        self.steps = 0

    def step(self, x0: torch.Tensor, x1: torch.Tensor) -> None:
        m = cosine_schedule(self.steps, 1000, 0.996, 1)
        update_momentum(self.model.backbone, self.model.backbone_momentum, m=m)
        update_momentum(self.model.projection_head, self.model.projection_head_momentum, m=m)
        p0, z0 = self.model(x0), self.model.forward_momentum(x0)
        p1, z1 = self.model(x1), self.model.forward_momentum(x1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.steps += 1


class Files(torch.utils.data.Dataset):
    """Images read from files as ``LightlyDataset`` reads them (PIL, RGB), through ``transform``."""

    def __init__(self, files: list[str], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), 0


def pipeline(request: dict, args: argparse.Namespace) -> dict:
    size = int(request["pipeline"])
    transform = BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=size), view_2_transform=BYOLView2Transform(input_size=size)
    )
    loader = torch.utils.data.DataLoader(
        Files(request["files"], transform), batch_size=int(request["batch"]), shuffle=True, drop_last=True,
        num_workers=int(request["num_workers"]),
    )  # fmt: skip
    trainer, warmup, marks = Trainer(3, args), int(request["warmup"]), []
    while len(marks) < warmup + int(request["iterations"]):
        for (x0, x1), _ in loader:
            trainer.step(x0, x1)
            marks.append((time.perf_counter(), time.process_time()))
            if len(marks) == warmup + int(request["iterations"]):
                break
    return {"seconds": marks[-1][0] - marks[warmup - 1][0], "cpu_seconds": marks[-1][1] - marks[warmup - 1][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("views_file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--projection", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    views = torch.load(args.views_file, weights_only=True)
    step_trainer = Trainer(1, args)
    print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                      "lightly": lightly.__version__}), flush=True)  # fmt: skip
    for line in sys.stdin:
        request = json.loads(line)
        if "pipeline" in request:
            print(json.dumps(pipeline(request, args)), flush=True)
            continue
        x0, x1 = views[str(request["step"])]
        result = []
        for _ in range(int(request["steps"])):
            c0, t0 = time.process_time(), time.perf_counter()
            step_trainer.step(x0, x1)
            result.append({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0})
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
