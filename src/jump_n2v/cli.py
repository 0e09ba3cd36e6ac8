"""``jump-n2v``: run one step, or denoise one file, without Snakemake.

    jump-n2v check-config config/config.yaml
    jump-n2v demo resources/demo/raw/{well}_s{site}.tif resources/demo/clean/{well}_s{site}.tif
    jump-n2v train results/demo/DemoPlate/raw/DNA.zarr --out models/DNA --set epochs=20 --set variant=n2v2
    jump-n2v predict models/DNA results/demo/DemoPlate/raw/DNA.zarr denoised/DNA.zarr
    jump-n2v denoise models/DNA image.tif image_denoised.tif

predict and denoise first compare the images with the model's training data and warn when they look
unlike it (predict writes the comparison beside its output: denoised/DNA.training_check.json).
    jump-n2v export-bmz models/DNA DNA.bmz.zip
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def _parse_assignments(pairs: list[str]) -> dict:
    """``key=value`` pairs with YAML-typed values (``epochs=5``, ``variant=n2v2``, ``tta=true``)."""
    settings = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        settings[key] = yaml.safe_load(value)
    return settings


def _check_config(args) -> int:
    from jump_n2v.config import load_config

    config = load_config(args.config)
    for name, experiment in config["experiments"].items():
        print(f"{name}: {len(experiment['plates'])} plate(s), channels {', '.join(experiment['channels'])}")
    return 0


def _demo(args) -> int:
    from jump_n2v.demo import DemoSpec, write_demo_plate

    spec = DemoSpec(wells=tuple(args.wells), sites=args.sites, size=args.size, seed=args.seed)
    manifest = write_demo_plate(args.raw_pattern, args.clean_pattern, spec, plate=args.plate)
    print(f"wrote {len(manifest['files'])} sites of plate {args.plate}")
    return 0


def _train(args) -> int:
    import torch

    from jump_n2v.plumbing.locks import model_folder_lock
    from jump_n2v.plumbing.logs import rule_logger
    from jump_n2v.n2v import N2VSettings, train_channel

    torch.set_num_threads(args.threads)
    with model_folder_lock(args.out):
        summary = train_channel(args.arrays, N2VSettings.from_dict(_parse_assignments(args.set)), Path(args.out), log=rule_logger(None))
    print(f"model written to {args.out}: best validation loss {summary['best_val_loss']:.4g}")
    return 0


def _predict(args) -> int:
    import torch

    from jump_n2v.plumbing.logs import rule_logger
    from jump_n2v.n2v import load_trained
    from jump_n2v.n2v.similarity import check_array, comparison_path, warning_text
    from jump_n2v.predict.arrays import predict_array
    from jump_n2v.settings import PredictSettings

    torch.set_num_threads(args.threads)
    trained = load_trained(args.model)
    settings = PredictSettings.from_dict(_parse_assignments(args.set))
    log = rule_logger(None)
    check_json = comparison_path(args.out)
    comparison = check_array(trained, args.source, check_json, settings, model=str(args.model), log=log)
    summary = predict_array(trained.net, trained.mean, trained.std, args.source, args.out, settings, log=log,
                            posterior=trained.posterior)
    print(f"{summary['images']} images denoised at {summary['mpx_per_s']:.2f} Mpx/s into {args.out}")
    warning = warning_text(comparison, f"the images of {args.source}")
    if warning:  # repeated after the progress lines, where it is seen
        print(f"WARNING: {warning} (details: {check_json})")
    return 0


def _denoise(args) -> int:
    import numpy as np
    import tifffile
    import torch

    from jump_n2v.plumbing.atomic import atomic_output
    from jump_n2v.n2v import load_trained
    from jump_n2v.n2v.similarity import check_array, warning_text
    from jump_n2v.predict.runner import denoise_image
    from jump_n2v.settings import PredictSettings

    torch.set_num_threads(args.threads)
    trained = load_trained(args.model)
    image = tifffile.imread(args.image)
    if image.ndim != 2:
        raise SystemExit(f"{args.image}: expected one 2-D image, got shape {image.shape}; split hyperstacks with the workflow")
    settings = PredictSettings.from_dict(_parse_assignments(args.set))
    comparison = check_array(trained, image[np.newaxis], None, settings, model=str(args.model))
    denoised = denoise_image(trained.net, image.astype(np.float32), trained.mean, trained.std, settings,
                             posterior=trained.posterior)
    with atomic_output(args.out) as temporary:
        tifffile.imwrite(temporary, denoised, photometric="minisblack")
    print(f"wrote {args.out}")
    warning = warning_text(comparison, args.image)
    if warning:
        print(f"WARNING: {warning}")
    return 0


def _export_bmz(args) -> int:
    import tifffile

    from jump_n2v.export.bmz import export_bmz

    image = tifffile.imread(args.image) if args.image else None
    if image is not None and image.ndim != 2:
        raise SystemExit(f"{args.image}: expected one 2-D image, got shape {image.shape}")
    result = export_bmz(args.model, args.out, image=image, name=args.name, authors=args.author or None, test=not args.no_test)
    print(f"wrote {args.out} (bioimageio test_model: {result['status']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jump-n2v", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="validate a config file and list its experiments")
    check.add_argument("config")
    check.set_defaults(run=_check_config)

    demo = commands.add_parser("demo", help="write a synthetic Cell Painting plate with ground truth")
    demo.add_argument("raw_pattern", help="path pattern with {well} and {site}")
    demo.add_argument("clean_pattern", help="path pattern with {well} and {site}")
    demo.add_argument("--plate", default="DemoPlate")
    demo.add_argument("--wells", nargs="+", default=["B02", "B03", "C02"])
    demo.add_argument("--sites", type=int, default=2)
    demo.add_argument("--size", type=int, default=256)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=_demo)

    train = commands.add_parser("train", help="train an N2V model on one channel's Zarr array(s)")
    train.add_argument("arrays", nargs="+", help="Zarr arrays (images x Y x X) of one channel")
    train.add_argument("--out", required=True, help="model folder")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="n2v setting (repeatable)")
    train.add_argument("--threads", type=int, default=2)
    train.set_defaults(run=_train)

    predict = commands.add_parser("predict", help="denoise a channel's Zarr array with a trained model")
    predict.add_argument("model", help="model folder or its model.json")
    predict.add_argument("source", help="Zarr array (images x Y x X)")
    predict.add_argument("out", help="denoised Zarr array to write")
    predict.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="predict setting (repeatable)")
    predict.add_argument("--threads", type=int, default=2)
    predict.set_defaults(run=_predict)

    denoise = commands.add_parser("denoise", help="denoise one 2-D TIFF with a trained model")
    denoise.add_argument("model", help="model folder or its model.json")
    denoise.add_argument("image")
    denoise.add_argument("out", help="float32 TIFF to write")
    denoise.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="predict setting (repeatable)")
    denoise.add_argument("--threads", type=int, default=2)
    denoise.set_defaults(run=_denoise)

    bmz = commands.add_parser("export-bmz", help="export a trained model as a BioImage Model Zoo package (zip), tested with bioimageio.core")
    bmz.add_argument("model", help="model folder or its model.json")
    bmz.add_argument("out", help="zip to write, e.g. DNA.bmz.zip")
    bmz.add_argument("--image", help="2-D TIFF for the test tensors (default: the model's first validation image)")
    bmz.add_argument("--name", help="model name (default: jump-n2v <VARIANT> <model folder name>)")
    bmz.add_argument("--author", action="append", default=[], help="author name (repeatable; default: jump-n2v authors)")
    bmz.add_argument("--no-test", action="store_true", help="skip bioimageio.core's test_model")
    bmz.set_defaults(run=_export_bmz)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
