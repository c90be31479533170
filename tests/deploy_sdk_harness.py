"""Run the MONAI Deploy App SDK's ``MonaiBundleInferenceOperator`` on one in-memory image, inside a Holoscan
application on CPU (executed by the tests in the venv that holds ``monai-deploy-app-sdk`` and the project's wheel):

    python deploy_sdk_harness.py <bundle folder> <input.pkl> <output.pkl>

``input.pkl`` holds ``{"array": ndarray, "metadata": dict}``, the ``Image`` an upstream operator emits (MONAI's axis
order, no channel: (W, H) or (W, H, D)); ``output.pkl`` receives what the operator emits for the bundle's ``pred``
(an ``Image`` is stored as ``{"array", "metadata"}``, other results as they are).
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec
from monai.deploy.core.domain import Image
from monai.deploy.core.io_type import IOType
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)


class ImageSource(Operator):
    """Emits one ``Image`` on port ``image``."""

    def __init__(self, fragment, *args, image: Image, **kwargs) -> None:
        self._image = image
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")

    def compute(self, op_input, op_output, context) -> None:
        op_output.emit(self._image, "image")


class ResultSink(Operator):
    """Pickles what arrives on port ``pred`` to ``path``."""

    def __init__(self, fragment, *args, path: Path, **kwargs) -> None:
        self._path = path
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("pred")

    def compute(self, op_input, op_output, context) -> None:
        value: Any = op_input.receive("pred")
        if isinstance(value, Image):
            value = {"array": value.asnumpy(), "metadata": dict(value.metadata())}
        self._path.write_bytes(pickle.dumps(value))


class BundleHarnessApp(Application):
    """source -> MonaiBundleInferenceOperator (directory bundle, config ``inference``) -> sink."""

    def __init__(self, bundle: Path, image: Image, output: Path, output_type: type) -> None:
        self._bundle, self._image, self._output, self._output_type = bundle, image, output, output_type
        super().__init__([sys.argv[0]])  # no -i/-o/-m: the bundle is given as a folder, not as an app model

    def compose(self) -> None:
        app_context = Application.init_app_context(self.argv)
        source = ImageSource(self, CountCondition(self, 1), image=self._image, name="source")
        bundle = MonaiBundleInferenceOperator(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", self._output_type, IOType.IN_MEMORY)],
            app_context=app_context,
            bundle_path=self._bundle,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            name="bundle",
        )
        sink = ResultSink(self, path=self._output, name="sink")
        self.add_flow(source, bundle, {("image", "image")})
        self.add_flow(bundle, sink, {("pred", "pred")})


def main(bundle: str, input_file: str, output_file: str) -> None:
    given = pickle.loads(Path(input_file).read_bytes())
    image = Image(given["array"], metadata=given["metadata"])
    output_type = {"image": Image, "probabilities": dict}.get(given.get("output_type", "image"), object)
    BundleHarnessApp(Path(bundle), image, Path(output_file), output_type).run()


if __name__ == "__main__":
    main(*sys.argv[1:4])
