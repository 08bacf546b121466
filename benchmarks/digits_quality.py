"""Do a checkpoint's samples look like digits? Judged by a classifier lit_gp did not train.

    python benchmarks/digits_quality.py outputs/<date>/<time>/checkpoints/last.ckpt

The judges are scikit-learn's SVC (RBF kernel) fitted on the real training split of
scikit-learn's 8x8 digits (the split lit_gp.data.DigitsDataModule uses with seed 0), with two
ways of turning its scores into probabilities: libsvm's pairwise Platt scaling
(``SVC(probability=True)``) and scikit-learn's sigmoid calibration
(``CalibratedClassifierCV(SVC(), ensemble=False)``, its recommended replacement). They never see
generated images. The two agree on real digits and can disagree a lot on generated ones, so both
are reported and both must pass. For ``num_samples`` generated images each judge gives the share
of each predicted class and the mean top-class probability, next to the same figures for the
real validation images; the targets of the image issue are every class at least 4% of the
samples and a mean top-class probability of at least 0.8. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import SVC

from lit_gp import GANModule
from lit_gp.data import DigitsDataModule

MIN_CLASS_FRACTION = 0.04
MIN_MEAN_TOP_PROBABILITY = 0.8


def to_sklearn_pixels(images: torch.Tensor) -> np.ndarray:
    """(N, 1, 8, 8) images in [-1, 1] to scikit-learn's digits scale: 64 values in [0, 16]."""
    return ((images.clamp(-1, 1) + 1) * 8).reshape(len(images), -1).double().numpy()


def judge(probabilities: np.ndarray) -> tuple[np.ndarray, float]:
    """Share of each predicted class and the mean top-class probability."""
    predicted = probabilities.argmax(1)
    shares = np.bincount(predicted, minlength=probabilities.shape[1]) / len(predicted)
    return shares, float(probabilities.max(1).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a GANModule checkpoint trained on data=digits")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    datamodule = DigitsDataModule(seed=0)
    datamodule.setup("fit")
    train_images, train_labels = datamodule.real_images("train")
    val_images, val_labels = datamodule.real_images("val")

    model = GANModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
    torch.manual_seed(args.seed)
    samples = model.sample(args.num_samples)
    if tuple(samples.shape[1:]) != (1, 8, 8):
        print(f"error: checkpoint: samples have shape {tuple(samples.shape[1:])}, not (1, 8, 8)")
        return 2

    with warnings.catch_warnings():
        # SVC(probability=True) is deprecated in scikit-learn 1.9, and still the classic judge.
        warnings.simplefilter("ignore", FutureWarning)
        judges = {
            "SVC, Platt scaling": SVC(probability=True, random_state=0),
            "SVC, sigmoid calibration": CalibratedClassifierCV(SVC(), ensemble=False),
        }
        passed = True
        print(f"judges fitted on {len(train_images)} real digits; {args.num_samples} samples")
        header = "".join(f"{digit:>6}" for digit in range(10))
        print(f"{'':>34}{header}    min  mean top p")
        for name, judge_model in judges.items():
            judge_model.fit(to_sklearn_pixels(train_images), train_labels.numpy())
            val_probabilities = judge_model.predict_proba(to_sklearn_pixels(val_images))
            accuracy = float((val_probabilities.argmax(1) == val_labels.numpy()).mean())
            shares, top = judge(judge_model.predict_proba(to_sklearn_pixels(samples)))
            real_shares, real_top = judge(val_probabilities)
            for label, row, mean_top in (
                (f"{name}: generated", shares, top),
                (f"real val (accuracy {accuracy:.3f})", real_shares, real_top),
            ):
                cells = "".join(f"{share:6.1%}" for share in row)
                print(f"{label:>34}{cells} {row.min():6.1%}  {mean_top:.3f}")
            passed &= shares.min() >= MIN_CLASS_FRACTION and top >= MIN_MEAN_TOP_PROBABILITY
    print(
        f"targets (both judges): every class >= {MIN_CLASS_FRACTION:.0%} and mean top p >= "
        f"{MIN_MEAN_TOP_PROBABILITY}: {'met' if passed else 'MISSED'}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
