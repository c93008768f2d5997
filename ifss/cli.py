"""`ifss train|eval|pseudo-labels|synth|splits|download|convert-coco|coco-voc|weights|bench|
fork-server`: parse, call, report errors."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ifss.errors import IfssError


def _train(args) -> None:
    from ifss.config import build_config
    from ifss.run import train_run

    overrides = list(args.set or [])
    if args.previous:
        overrides.append(f"previous={args.previous}")
    cfg = build_config(args.config, overrides)
    out = args.out or default_run_dir(cfg)
    train_run(cfg, out)


def default_run_dir(cfg) -> Path:
    """The workflow's layout (ifss/workflow/paths.py), under ./results (the workflow always
    passes --out)."""
    from ifss.workflow.paths import run_dir

    name = cfg.label or cfg.method  # a variant's runs have their own folder, as in the workflow
    return Path(run_dir(cfg.dataset, cfg.task, name, cfg.step, cfg.nshot, cfg.ishot,
                        cfg.data.protocol))


def _eval(args) -> None:
    from ifss.config import parse_overrides
    from ifss.run import eval_run

    out = args.out or Path(args.checkpoint).parent / "eval"
    eval_run(args.checkpoint, parse_overrides(args.set or []), out)


def _pseudo_labels(args) -> None:
    from ifss.config import parse_overrides
    from ifss.simformer.pseudo_labels import generate_pseudo_labels

    generate_pseudo_labels(args.model, args.out, parse_overrides(args.set or []))


def _synth(args) -> None:
    from ifss.data.synthetic import generate

    generate(args.out, seed=args.seed, n_train=args.train, n_val=args.val, size=args.size)


def _splits(args) -> None:
    from ifss.data.index import write_index
    from ifss.data.layout import layout_for
    from ifss.data.records import get_dataset

    record = get_dataset(args.dataset)
    layout = layout_for(args.dataset, args.root)
    layout.check()
    write_index(args.out, layout, record.train_splits[0], record.label_space, dataset=args.dataset)


def _download(args) -> None:
    from ifss.data.prepare import fetch_dataset

    fetch_dataset(args.dataset, Path(args.root), mirror=args.mirror, coco_source=args.label_source)


def _convert_coco(args) -> None:
    from ifss.data.prepare import prepare_coco

    prepare_coco(Path(args.raw), Path(args.out), source=args.source)


def _coco_voc(args) -> None:
    from ifss.data.coco_voc import build_coco_voc

    build_coco_voc(Path(args.coco), Path(args.voc), Path(args.out), workers=args.workers)


def _weights(args) -> None:
    from ifss.models.pretrained import fetch_weights

    print(fetch_weights(args.name, Path(args.dest), mirror=args.mirror))


def _bench(args) -> None:
    from ifss.bench import run_bench

    run_bench(device=args.device, quick=args.quick, out_dir=Path(args.out))


def _fork_server(args) -> None:
    from ifss.fork_server import serve

    serve(args.socket)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ifss", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train and evaluate one step of one run")
    t.add_argument("--config", help="run config YAML (every key has a default)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--previous", help="model.pt of the previous step (same as --set previous=)")
    t.add_argument("--out", help="run directory (default: results/runs/...)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate a saved model.pt on its task's test set, or on "
                       "episodes of its fold (--set eval.protocol=episodic: GFSS)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--set", action="append", metavar="KEY=VALUE")
    e.add_argument("--out", help="directory for metrics.json (default: beside the checkpoint)")
    e.set_defaults(func=_eval)

    q = sub.add_parser("pseudo-labels", help="SimFormer's pseudo labels: a weak-shot model labels "
                       "the novel pixels of its training images (use the folder as "
                       "data.train_labels for retraining)")
    q.add_argument("--model", required=True, help="model.pt of a weak-shot run")
    q.add_argument("--out", required=True, help="folder for <image id>.png and manifest.json "
                   "(replaced only once the new one is complete)")
    q.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key of the run's saved config (data.root, train.device, "
                   "eval.batch_size, ...)")
    q.set_defaults(func=_pseudo_labels)

    s = sub.add_parser("synth", help="generate the synthetic benchmark (VOC layout)")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--train", type=int, default=1600, help="train images")
    s.add_argument("--val", type=int, default=320, help="val images")
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.set_defaults(func=_synth)

    x = sub.add_parser("splits", help="index which classes each train image holds")
    x.add_argument("--dataset", required=True)
    x.add_argument("--root", required=True)
    x.add_argument("--out", required=True, help="JSON file (use as data.class_index)")
    x.set_defaults(func=_splits)

    # choices from the dataset records (torch-free, cheap to import)
    from ifss.data.records import DATASETS

    d = sub.add_parser("download", help="download (checksummed), extract and prepare a dataset")
    d.add_argument("dataset", choices=[n for n, r in DATASETS.items() if r.sources])
    d.add_argument("--root", required=True)
    d.add_argument("--mirror", help="replace scheme and host of every URL (local mirror)")
    d.add_argument("--label-source", "--coco-source", dest="label_source",
                   choices=sorted({s for r in DATASETS.values() for s in r.label_sources}),
                   help="how to build the labels, for a dataset with several ways "
                        "(default: its first; COCO: instances)")
    d.set_defaults(func=_download)

    c = sub.add_parser("convert-coco", help="COCO instances / COCO-stuff maps -> object labels")
    c.add_argument("--raw", required=True, help="folder with the extracted COCO downloads")
    c.add_argument("--out", required=True)
    c.add_argument("--source", default="instances", choices=["instances", "stuffthingmaps"])
    c.set_defaults(func=_convert_coco)

    v = sub.add_parser("coco-voc", help="build the COCO-to-VOC layout from a prepared COCO and VOC")
    v.add_argument("--coco", required=True, help="the folder `ifss download coco` prepared")
    v.add_argument("--voc", required=True, help="the folder `ifss download voc` prepared")
    v.add_argument("--out", required=True, help="the coco-voc folder (use as data.root)")
    v.add_argument("--workers", type=int, default=4, help="threads relabelling VOC")
    v.set_defaults(func=_coco_voc)

    w = sub.add_parser("weights", help="fetch ImageNet weights for a backbone")
    w.add_argument("name")
    w.add_argument("--dest", required=True)
    w.add_argument("--mirror")
    w.set_defaults(func=_weights)

    b = sub.add_parser("bench", help="measure speed and memory against bare PyTorch")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--quick", action="store_true", help="CI-sized (seconds)")
    b.add_argument("--out", default="results/bench", help="folder for <device>.json and .md")
    b.set_defaults(func=_bench)

    f = sub.add_parser("fork-server", help="one warm process that runs `ifss train | eval | "
                       "pseudo-labels` in forked children (torch imported once); commands use it "
                       "when $IFSS_FORK_SERVER names its socket (the local workflow starts one)")
    f.add_argument("--socket", required=True, help="Unix socket path to listen on")
    f.set_defaults(func=_fork_server)
    return p


def main(argv: list[str] | None = None) -> int:
    """The `ifss` command: in the fork server when one is set and serves it, else here."""
    from ifss.fork_server import run_in_server

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = run_in_server(argv)
    except KeyboardInterrupt:  # before the server's run began (after: the run reports it)
        print("ifss: interrupted", file=sys.stderr)
        return 130
    return run_command(argv) if code is None else code


def run_command(argv: list[str]) -> int:
    """Run `ifss argv` in this process; the exit code."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except IfssError as err:
        print(f"ifss: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused a file (full, read-only, in the way)
        if err.filename is None:
            raise  # not about a file (a network error, say): keep the whole story
        from ifss.atomic import os_error_message

        print(f"ifss: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ifss: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
