"""`misfit predict <run id | cell> <images>`: a logged model's answers, one line per image.

<run id | cell>: an MLflow run id (its model, runs:/<id>/model) or a cell id (the registered
model misfit-<cell> at its alias `best`: the cell's run with the best valid score).
<images>: an .npz holding `images` (uint8 [n, 28, 28]) or an IDX image file (.gz too).
The store is this project's (mlruns/mlflow.db) unless MLFLOW_TRACKING_URI names another.

The answer is the task's: a stroke count (regression), 0/1 (probability, binary), the digit
(multiclass), or four 0/1 bits (multilabel, space-separated). --json prints one JSON list.
"""
from __future__ import annotations

import argparse
import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np

IDX_UBYTE = 0x08  # IDX type code of unsigned bytes


class PredictError(Exception):
    pass


def read_images(path: Path) -> np.ndarray:
    """uint8 [n, 28, 28] from an .npz (`images`) or an IDX image file."""
    if not path.is_file():
        raise PredictError(f"{path}: no such file")
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            if "images" not in arrays:
                raise PredictError(f"{path}: no `images` array (it holds {sorted(arrays)})")
            images = arrays["images"]
    else:
        images = read_idx_images(path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise PredictError(f"{path}: expected uint8 images [n, 28, 28], got {images.dtype} {list(images.shape)}")
    return images


def read_idx_images(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        payload = handle.read()
    if len(payload) < 4:
        raise PredictError(f"{path}: not an IDX file (too short)")
    zero, kind, ndim = struct.unpack(">HBB", payload[:4])
    if zero != 0 or kind != IDX_UBYTE or ndim != 3:
        raise PredictError(f"{path}: not an IDX file of unsigned-byte images (magic {payload[:4].hex()})")
    shape = struct.unpack(">3I", payload[4:16])
    body = np.frombuffer(payload, dtype=np.uint8, offset=16)
    if body.size != int(np.prod(shape)):
        raise PredictError(f"{path}: header says {list(shape)}, but it holds {body.size} bytes of pixels")
    return body.reshape(shape)


def model_uri(target: str, root: Path) -> str:
    """A cell id (a records/<cell>.json or a cell of params.yaml) means its registered best."""
    from misfit.core.config import ConfigError, load_params
    from misfit.core.layout import PARAMS_FILE, RECORDS_DIR
    from misfit.track.model import BEST_ALIAS, MODEL_NAME, registered_name

    cells = {p.stem for p in (root / RECORDS_DIR).glob("*.json")}
    if (root / PARAMS_FILE).is_file():
        try:
            cells |= set(load_params(root / PARAMS_FILE).cells)
        except ConfigError as error:
            raise PredictError(str(error)) from None
    if target in cells:
        return f"models:/{registered_name(target)}@{BEST_ALIAS}"
    return f"runs:/{target}/{MODEL_NAME}"


def predict(target: str, images: np.ndarray, root: Path) -> np.ndarray:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from misfit.track.model import quiet_mlflow, tracking_uri_set
    from misfit.track.store import tracking_uri

    uri = model_uri(target, root)
    with tracking_uri_set(tracking_uri(root)), quiet_mlflow():  # the registry follows the tracking URI
        try:
            model = mlflow.pyfunc.load_model(uri)
        except (MlflowException, OSError) as error:
            raise PredictError(f"{uri}: no model to load ({str(error).splitlines()[0]}); a cell's model is "
                               "registered by its evaluate stage, a run's logged by it or by "
                               "`misfit restore-runs` where the checkpoint is present") from None
        return np.asarray(model.predict(images))


def as_text(answers: np.ndarray) -> str:
    lines = [" ".join(str(v) for v in row) if np.ndim(row) else str(row) for row in answers.tolist()]
    return "".join(f"{line}\n" for line in lines)


def register(commands) -> None:
    parser = commands.add_parser("predict", help="a logged model's answers for images (run id or cell)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="an MLflow run id, or a cell id (its registered `best` model)")
    parser.add_argument("images", type=Path, help=".npz with `images` (uint8 [n, 28, 28]) or an IDX image file")
    parser.add_argument("--json", action="store_true", help="print the answers as one JSON list")
    parser.add_argument("-C", "--root", type=Path, default=Path("."), help="project root (default: .)")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    try:
        answers = predict(args.target, read_images(args.images), args.root)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(answers.tolist()) if args.json else as_text(answers), end="\n" if args.json else "")
    return 0
