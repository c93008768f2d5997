"""Rule `figures` (or the command line): two or more model.pt of one setting -> the qualitative
comparison and the t-SNE PNGs of the MCLOS paper (ifss.figures does the work).

Snakemake (rules/figures.smk): input.models (one model.pt per run, in the order of
params.spec["names"]), output.qualitative, output.tsne, params.spec (names, data_root, num_images,
tsne_images, per_class, tsne_iterations), log.
Command line:
    python workflow/scripts/figures.py --run PIFS=path/model.pt --run MCLOS=path/model.pt \
        --qualitative out/qualitative.png --tsne out/tsne.png [--data-root DIR]
"""
import argparse
import json
import logging
import sys

from ifss.errors import IfssError
from ifss.figures import qualitative_figure, tsne_figure


def make(runs: dict, qualitative: str, tsne: str, data_root=None, num_images=4,
         tsne_images=40, per_class=100, iterations=1000) -> dict:
    shown = qualitative_figure(runs, qualitative, data_root, num_images=num_images)
    scores = tsne_figure(runs, tsne, data_root, num_images=tsne_images, per_class=per_class,
                         iterations=iterations)
    logging.info("qualitative: test images %s; t-SNE silhouette %s", shown, json.dumps(scores))
    return scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=MODEL_PT")
    ap.add_argument("--qualitative", required=True)
    ap.add_argument("--tsne", required=True)
    ap.add_argument("--data-root")
    ap.add_argument("--num-images", type=int, default=4)
    ap.add_argument("--tsne-images", type=int, default=40)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--tsne-iterations", type=int, default=1000)
    args = ap.parse_args(argv)
    runs = {}
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"--run {item!r} is not NAME=path/to/model.pt")
        runs[name] = path
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        scores = make(runs, args.qualitative, args.tsne, args.data_root, args.num_images,
                      args.tsne_images, args.per_class, args.tsne_iterations)
    except IfssError as err:
        print(f"figures: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"silhouette": scores}))
    return 0


if "snakemake" in globals():
    sm = snakemake  # noqa: F821 (set by Snakemake)
    logging.basicConfig(filename=sm.log[0], level=logging.INFO)
    spec = sm.params.spec
    try:
        make(dict(zip(spec["names"], sm.input.models)), sm.output.qualitative, sm.output.tsne,
             spec["data_root"], spec["num_images"], spec["tsne_images"], spec["per_class"],
             spec["tsne_iterations"])
    except Exception:
        logging.exception("figures failed")
        raise
elif __name__ == "__main__":
    sys.exit(main())
