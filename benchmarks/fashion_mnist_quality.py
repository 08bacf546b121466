"""How good are a Fashion-MNIST checkpoint's samples? FID/KID and an independent judge, with the
same figures for real test images as the reference.

    python benchmarks/fashion_mnist_quality.py outputs/<date>/<time>/checkpoints/last.ckpt ...

For each checkpoint (and once for the 10,000 real test images) it prints:

- FID and KID against ``num_samples`` training images in the features of the Fashion-MNIST
  classifier that ``callbacks.image_metrics`` trains and caches (the same classifier, read from
  the same cache, as the run's ``val/fid_fashion_mnist_classifier``; trained here if missing);
- the rarest class's share and the mean top-class probability by a judge that is not that
  classifier: scikit-learn's multinomial logistic regression on the 784 pixels, fitted on the
  real training split (60,000 images). It never sees generated images.

The real test images' row is what a perfect generator would score with the same sample count.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import sklearn
import torch
from digits_quality import judge as class_shares  # benchmarks/: the same shares and top p
from omegaconf import OmegaConf
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lit_gp import GANModule
from lit_gp.data import FashionMNISTDataModule
from lit_gp.metrics.features import cached_classifier, default_cache_dir

_BATCH = 500
JUDGE_ITERATIONS = 200


def to_judge_pixels(images: torch.Tensor) -> np.ndarray:
    """(N, 1, 28, 28) images in [-1, 1] to the judge's input: 784 float32 values in [0, 1]."""
    return ((images.clamp(-1, 1) + 1) / 2).reshape(len(images), -1).float().numpy()


def fitted_judge(images: torch.Tensor, labels: torch.Tensor) -> LogisticRegression:
    """The judge fitted on the training split, cached beside the FID classifier (the fit takes
    several CPU-minutes; the data set is fixed, so the cache is keyed by the settings)."""
    path = default_cache_dir() / (
        f"fashion_mnist_judge_logistic_{JUDGE_ITERATIONS}_{len(images)}_sklearn{sklearn.__version__}"
        ".joblib"
    )
    if path.is_file():
        return joblib.load(path)
    judge = LogisticRegression(max_iter=JUDGE_ITERATIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        judge.fit(to_judge_pixels(images), labels.numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(judge, path)
    return judge


def distances(features: torch.nn.Module, real: torch.Tensor, images: torch.Tensor) -> tuple:
    """FID and KID of ``images`` against ``real`` in ``features``' space (the run's
    ``val/fid_fashion_mnist_classifier`` and ``val/kid_fashion_mnist_classifier`` with more
    samples; KID's scale follows the features' magnitudes, and its noise is the real row's)."""
    fid = FrechetInceptionDistance(feature=features, reset_real_features=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kid = KernelInceptionDistance(feature=features, subsets=50, subset_size=100)
    for chunk in real.split(_BATCH):
        fid.update(chunk, real=True)
        kid.update(chunk, real=True)
    for chunk in images.split(_BATCH):
        fid.update(chunk, real=False)
        kid.update(chunk, real=False)
    return float(fid.compute()), float(kid.compute()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoints", nargs="*", help="GANModule checkpoints of data=fashion_mnist"
    )
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    # The epochs data=fashion_mnist trains its FID classifier for, so that its cache entry is
    # the one the runs used.
    data_config = Path(__file__).resolve().parents[1] / "conf" / "data" / "fashion_mnist.yaml"
    parser.add_argument(
        "--classifier-epochs",
        type=int,
        default=OmegaConf.load(data_config).feature_classifier_epochs,
        help="callbacks.image_metrics.classifier_epochs of the runs (default: "
        "feature_classifier_epochs of conf/data/fashion_mnist.yaml)",
    )
    parser.add_argument("--root", default="data", help="data.root of the runs (default: data)")
    args = parser.parse_args()

    datamodule = FashionMNISTDataModule(root=args.root, seed=0)
    datamodule.setup("fit")
    train_images, train_labels = datamodule.real_images("train")
    test_images, test_labels = datamodule.real_images("val")
    # The classifier callbacks.image_metrics trains with data=fashion_mnist (its cache entry).
    features, accuracy = cached_classifier(
        datamodule.name,
        (train_images, train_labels),
        (test_images, test_labels),
        10,
        epochs=args.classifier_epochs,
    )
    reference = train_images[: args.num_samples]

    judge = fitted_judge(train_images, train_labels)
    test_probabilities = judge.predict_proba(to_judge_pixels(test_images))
    judge_accuracy = float((test_probabilities.argmax(1) == test_labels.numpy()).mean())
    print(
        f"FID/KID: fashion_mnist classifier features (test accuracy {accuracy:.3f}), "
        f"{args.num_samples} samples against {len(reference)} training images; judge: logistic "
        f"regression on pixels (test accuracy {judge_accuracy:.3f})"
    )
    print(f"{'':<60} {'FID':>7} {'KID':>8} {'rarest':>7} {'top p':>6}")
    rows = [("real test images", test_images[: args.num_samples])]
    for path in args.checkpoints:
        model = GANModule.load_from_checkpoint(path, map_location="cpu")
        torch.manual_seed(args.seed)
        with torch.no_grad():
            samples = torch.cat(
                [
                    model.sample(min(_BATCH, args.num_samples - start)).float()
                    for start in range(0, args.num_samples, _BATCH)
                ]
            )
        if tuple(samples.shape[1:]) != (1, 28, 28):
            print(f"error: {path}: samples have shape {tuple(samples.shape[1:])}, not (1, 28, 28)")
            return 2
        rows.append((path, samples))
    for name, images in rows:
        fid, kid = distances(features, reference, images)
        shares, top = class_shares(judge.predict_proba(to_judge_pixels(images)))
        print(f"{name[-60:]:<60} {fid:7.2f} {kid:8.1f} {shares.min():7.1%} {top:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
