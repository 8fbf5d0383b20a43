"""Inference: the :class:`Predictor` API and the ``rs2sam2 predict`` command.

Python::

    from rs2sam2.predict import Predictor

    predictor = Predictor.from_pretrained("checkpoints/rs2sam2-rrsisd")   # our folder or a released one
    pred = predictor.predict("scene.tif", "the storage tank left of the road")
    pred.mask          # (H, W) bool at the image's own resolution
    pred.probability   # (H, W) float32, sigmoid of the logits
    pred.save("mask.tif"); pred.to_vector("tanks.gpkg")    # on the image's grid, in its CRS
    preds = predictor.predict("scene.tif", ["the red car", "the white ship"])   # one batched pass
    pred = predictor.predict("scene.tif", "the ship", bbox=(500100, 5199800, 500300, 5200000))
    predictor.predict_to_file("big.tif", "the white storage tanks", out="tanks.tif", tile=1024)

How a prediction is made (the published inference path):

1. the image -- or the area of interest, ``bbox``/``window`` (:func:`rs2sam2.geo.area_of_interest`) --
   is read as 8-bit RGB (:mod:`rs2sam2.imageio`: 1 band is replicated, 4+ bands use bands 1,2,3
   unless ``bands`` says otherwise, non-8-bit data gets a per-band 2..98 percentile stretch);
2. it is resized (bilinear, no aspect-ratio preservation) to the SAM2 input (``config.image_size``)
   and to the BEiT-3 input (``config.beit3.img_size``) and ImageNet-normalised -- once, however many
   expressions are asked about it; the expressions then run as one batch;
3. the model's mask logits (at ``image_size``) are resized bilinearly to the image's own height and
   width; ``probability = sigmoid(logits)`` and ``mask = logits > threshold`` where the input has
   data. The default threshold 0.5 on the *logit* is the published rule (``argmax([1 - x, x])``;
   probability about 0.62); ``threshold=0`` gives the usual probability > 0.5.

Large areas (:mod:`rs2sam2.tiles`): ``mode="tiles"`` (or ``tile``) cuts the area into overlapping
tiles at native resolution, each one model input, merged by the nearest-centre rule; ``"whole"``
reads an area whose longer side exceeds twice the model input as a decimated copy (a warning says
by how much) and resizes its mask back to the full grid window by window.

The modules: :mod:`~rs2sam2.predict.inputs` (images, texts, the area and its plan),
:mod:`~rs2sam2.predict.api` (the :class:`Predictor`), :mod:`~rs2sam2.predict.jobs` (the batch job
file), :mod:`~rs2sam2.predict.cli` (the command). The files written are described in
:mod:`rs2sam2.results`.
"""

from ..results import Outputs, Prediction, SceneResult, write_outputs
from ..runtime import PRECISIONS, resolve_device
from .api import Predictor, Setup
from .cli import add_arguments, run
from .inputs import MODES, Area, InputError, open_image, parse_bands
from .jobs import Job, read_jobs, validate_jobs

__all__ = [
    "MODES",
    "PRECISIONS",
    "Area",
    "InputError",
    "Job",
    "Outputs",
    "Prediction",
    "Predictor",
    "SceneResult",
    "Setup",
    "add_arguments",
    "open_image",
    "parse_bands",
    "read_jobs",
    "resolve_device",
    "run",
    "validate_jobs",
    "write_outputs",
]
