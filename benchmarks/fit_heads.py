"""Heads for ``imgclassify fit`` (benchmark, not a test): held-out accuracy against examples per category,
fit time, and how well ``--threshold`` on the top-1 probability tells photos of no category apart.

    python benchmarks/fit_heads.py [--repeats 20] [--features FILE.npy] [--categories dogs,birds,...]

Categories: the 50 labelled ImageNet photos of tests/data and the sample photos (``kitten_small.jpg``,
a smaller copy of ``kitten.jpg``, left out), grouped by their labels into 8 coarse categories
(:data:`CATEGORIES`), embedded once with the bundled EfficientNet-Lite0 (1280 features).

* accuracy: for n = 1, 3, 5 examples per category, ``--repeats`` random draws of n training photos
  per category that has more than n, tested on that category's other photos; plus leave-one-out
  (every other photo trains). Micro accuracy over the test photos and the mean fit time.
* unknown photos: leave-one-category-out: fitted on the other 7 categories, the left-out
  category's photos should be unconfident, and so should wrong predictions; the leave-one-out
  top-1 probabilities of right predictions against those (AUROC), and the threshold ``fit`` would
  choose from them (:func:`imgclassify.fit.validation.choose_threshold`) with the share of right
  predictions it keeps confident and of left-out-category photos it rejects.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LABELLED = ROOT / "tests" / "data" / "imagenet-labelled"
SAMPLES = ROOT / "samples"

#: coarse category -> the photos' names (ImageNet photos by wnid, sample photos by file name)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "dogs": (
        "n02088094", "n02093428", "n02097474", "n02102480", "n02107908", "n02112137",
        "dog.jpg", "labrador.jpg", "brittany.jpg", "three_dogs.jpg",
    ),
    "mammals": ("n02120505", "n02391049", "n02444819", "n02493509", "kitten.jpg"),
    "birds": ("n01601694", "n01795545", "n01860187", "n02027492"),
    "small_animals": ("n01440764", "n01682714", "n01740131", "n01980166", "n02165105", "n02268853"),
    "vehicles": ("n04147183", "n04310018", "n04509417", "bus.jpg"),
    "places": ("n02894605", "n03042490", "n03240683", "n03457902", "n04443257", "n04562935", "n03776460", "n09472597"),
    "food": ("n07716906", "n07836838"),
    "objects": (
        "n02669723", "n02787622", "n02823428", "n02977058", "n03131574", "n03379051", "n03532672", "n03642806",
        "n03717622", "n03825788", "n03887697", "n03937543", "n03995372", "n04070727", "n04243546", "n04367480",
        "n06874185",
    ),
}  # fmt: skip


def photos(only: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """(paths, category index per photo, category names); ``only``: these categories."""
    names = [name for name in CATEGORIES if only is None or name in only]
    paths, labels = [], []
    for index, category in enumerate(names):
        for member in CATEGORIES[category]:
            found = sorted(LABELLED.glob(f"{member}_*.JPEG")) if member.startswith("n") else [SAMPLES / member]
            assert len(found) == 1 and found[0].is_file(), (category, member, found)
            paths.append(str(found[0]))
            labels.append(index)
    return paths, labels, names


def embed(paths: list[str], cache: Path | None) -> Any:
    import numpy as np

    if cache is not None and cache.is_file():
        return np.load(cache)
    from imgclassify.embed.embedder import Embedder
    from imgclassify.models.plan import plan_model
    from imgclassify.options import ModelOptions

    embedder = Embedder(plan_model(ModelOptions(model="efficientnet_lite0", device="cpu")))
    rows = [vector for batch in embedder.batches(paths, workers=0) for _, vector, _ in batch.rows()]
    array = np.stack(rows)  # type: ignore[arg-type]
    if cache is not None:
        np.save(cache, array)
    return array


HEADS: dict[str, tuple[str, dict[str, object]]] = {
    "nearest (chosen)": ("nearest", {}),
    "nearest, no power": ("nearest", {"power": 1.0}),
    "nearest, not centred": ("nearest", {"centred": False}),
    "logistic l2=0.01": ("logistic", {"l2": 0.01}),
    "logistic l2=0.1": ("logistic", {"l2": 0.1}),
    "logistic l2=1": ("logistic", {"l2": 1.0}),
    "logistic l2=0.1, no power": ("logistic", {"l2": 0.1, "power": 1.0}),
    "logistic l2=0.1, not balanced": ("logistic", {"l2": 0.1, "balanced": False}),
    "centroid": ("centroid", {}),
    "centroid, no power": ("centroid", {"power": 1.0}),
    "knn k=5": ("knn", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--features", type=Path, default=None, help="cache the embeddings in this .npy")
    parser.add_argument("--categories", default=None, help="only these categories (comma-separated)")
    args = parser.parse_args()
    import random

    import torch

    from imgclassify.fit.heads import predictor
    from imgclassify.fit.validation import choose_threshold
    from imgclassify.system.capabilities import cpu_description

    paths, labels, names = photos(args.categories.split(",") if args.categories else None)
    start = time.perf_counter()
    features = torch.from_numpy(embed(paths, args.features))
    print(
        f"{len(paths)} photos, {len(names)} categories, embedded in {time.perf_counter() - start:.1f}s; {cpu_description()}"
    )
    y = torch.tensor(labels)
    by_category = {c: [i for i, label in enumerate(labels) if label == c] for c in range(len(names))}
    header = (
        "| head | "
        + " | ".join(["n=1", "n=3", "n=5", "leave-one-out"])
        + " | fit (ms) | AUROC unknown | threshold: right kept / unknown rejected |"
    )
    print(header)
    print("|" + " --- |" * 8)
    for title, (kind, settings) in HEADS.items():
        predict = predictor(kind, **settings)
        cells, times = [], []
        for n in (1, 3, 5):
            correct = total = 0
            for repeat in range(args.repeats):
                rng = random.Random(repeat)
                train, test = [], []
                for members in by_category.values():
                    if len(members) <= n:
                        continue
                    chosen = rng.sample(members, n)
                    train += chosen
                    test += [i for i in members if i not in chosen]
                kept = sorted({int(y[i]) for i in train})
                remap = {c: k for k, c in enumerate(kept)}
                ytrain = torch.tensor([remap[int(y[i])] for i in train])
                t0 = time.perf_counter()
                probs = predict(features[train], ytrain, len(kept), features[test])
                times.append(time.perf_counter() - t0)
                predicted = probs.argmax(1)
                correct += sum(kept[int(p)] == int(y[i]) for p, i in zip(predicted, test, strict=True))
                total += len(test)
            cells.append(f"{100 * correct / total:.0f}% ({len(kept)} cat.)")
        # leave-one-out: every other photo trains
        right: list[float] = []
        wrong: list[float] = []
        for i in range(len(paths)):
            train = [j for j in range(len(paths)) if j != i]
            probs = predict(features[train], y[train], len(names), features[i : i + 1])
            (right if int(probs.argmax(1)) == int(y[i]) else wrong).append(float(probs.max()))
        cells.append(f"{100 * len(right) / len(paths):.0f}%")
        # unknown: leave one category out
        unknown = []
        for c, members in by_category.items():
            train = [j for j in range(len(paths)) if int(y[j]) != c]
            kept = sorted({int(y[j]) for j in train})
            remap = {k: r for r, k in enumerate(kept)}
            probs = predict(
                features[train], torch.tensor([remap[int(y[j])] for j in train]), len(kept), features[members]
            )
            unknown += [float(p) for p in probs.max(1).values]
        rest = wrong + unknown
        pairs = sum((k > u) + 0.5 * (k == u) for k in right for u in rest)
        auroc = pairs / (len(right) * len(rest))
        threshold = choose_threshold(right, rest)
        if threshold is None:
            shares = "none"
        else:
            kept_share = sum(k >= threshold for k in right) / len(right)
            rejected = sum(u < threshold for u in unknown) / len(unknown)
            shares = f"{threshold:.2f}: {100 * kept_share:.0f}% / {100 * rejected:.0f}%"
        print(
            f"| {title} | " + " | ".join(cells) + f" | {1000 * statistics.median(times):.0f} | {auroc:.2f} | {shares} |"
        )


if __name__ == "__main__":
    main()
