"""Command line: ``python -m medclip_core <command> ...``; JSON on stdout.

Bad input exits with status 2 and one line on stderr (``error: ...``); nothing else is printed.
Set ``MEDCLIP_DEBUG=1`` to see the traceback of an unexpected failure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from medclip_core.errors import MedclipError
from medclip_core.train.runs import METHODS
from medclip_core.train.tasks import TRAIN_TASKS

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


def cmd_models(args: argparse.Namespace) -> Any:
    from medclip_core.models import describe_models

    return describe_models()


def cmd_inspect(args: argparse.Namespace) -> Any:
    from medclip_core.io import load_image

    window = tuple(args.window) if args.window else None
    image = load_image(args.image, frame=args.frame, window=window)
    result: dict[str, Any] = {"path": str(args.image), "width": image.size[0], "height": image.size[1],
                              "color": image.is_color, "metadata": image.metadata}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image.to_pil().save(args.out)
        result["preview"] = str(args.out)
    return result


def cmd_phantom(args: argparse.Namespace) -> Any:
    from medclip_core.data.phantom import write_examples

    if args.n < 1:
        raise MedclipError("--n must be at least 1.")
    return write_examples(args.out, n=args.n, seed=args.seed, size=args.size, split=args.split)


def cmd_train(args: argparse.Namespace) -> Any:
    if args.task == "report":
        return _train_report(args)
    if args.task == "segmentation":
        return _train_segmentation(args)
    if args.task != "contrastive":
        raise MedclipError(f"Unknown training task '{args.task}'.")
    return _train_contrastive(args)


def _train_report(args: argparse.Namespace) -> Any:
    from dataclasses import asdict

    from medclip_core.train.report import ReportTrainConfig, train_report_decoder

    overrides = {k: v for k, v in vars(args).items()
                 if k in ReportTrainConfig.__dataclass_fields__ and k != "out_dir" and v is not None}
    config = ReportTrainConfig(out_dir=str(args.out), **overrides)
    result = train_report_decoder(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    return {k: v for k, v in asdict(result).items() if k != "metrics"}


def _train_segmentation(args: argparse.Namespace) -> Any:
    from dataclasses import asdict

    from medclip_core.train.segmentation import SegTrainConfig, train_segmentation

    overrides = {k: v for k, v in vars(args).items()
                 if k in SegTrainConfig.__dataclass_fields__ and k != "out_dir" and v is not None}
    result = train_segmentation(SegTrainConfig(out_dir=str(args.out), **overrides),
                                log=lambda line: print(line, file=sys.stderr, flush=True))
    return {k: v for k, v in asdict(result).items() if k != "history"}


def _stop_on_sigterm():
    """A ``should_stop`` callback that turns true on SIGTERM (how the run manager cancels a run)."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop.is_set


def _train_contrastive(args: argparse.Namespace) -> Any:
    from dataclasses import asdict

    from medclip_core.train.contrastive import TrainConfig, train

    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    if args.preset == "phantom":
        overrides.setdefault("architecture", "phantom-cnn-minilm")
        overrides.setdefault("data", "phantom")
    config = TrainConfig(out_dir=str(args.out), **{k: v for k, v in overrides.items() if k != "out_dir"})
    result = train(config, log=lambda line: print(line, file=sys.stderr, flush=True), should_stop=_stop_on_sigterm())
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 answers
        return None
    return {k: v for k, v in asdict(result).items() if k != "metrics"}


def cmd_runs(args: argparse.Namespace) -> Any:
    """Background runs (the Training tab's manager): list, start, cancel, validate a dataset CSV."""
    from dataclasses import fields

    from medclip_core.train.datasets import validate_pairs_csv
    from medclip_core.train.runs import RunManager, RunRequest

    if args.action != "list" and not args.target:
        raise MedclipError(f"runs {args.action} needs a {'CSV path' if args.action == 'validate' else 'run name'}.")
    if args.action == "validate":
        return validate_pairs_csv(args.target).to_dict()
    manager = RunManager()
    if args.action == "list":
        return [r.to_dict() for r in manager.refresh()]
    if args.action == "cancel":
        return manager.cancel(args.target, wait_s=args.wait).to_dict()
    request = {f.name: getattr(args, f.name) for f in fields(RunRequest) if getattr(args, f.name, None) is not None}
    return manager.submit(RunRequest(name=args.target, **request)).to_dict()


def cmd_eval(args: argparse.Namespace) -> Any:
    from medclip_core.eval.phantom_eval import evaluate_phantom, write_eval
    from medclip_core.models import load_model

    if args.data != "phantom":
        raise MedclipError(f"Unknown evaluation data '{args.data}': only 'phantom' is available.")
    if args.task == "report":
        return _eval_report(args)
    model = load_model(args.model, device=args.device)
    progress = lambda fraction, message: print(f"{fraction:.0%} {message}", file=sys.stderr)  # noqa: E731
    if args.task == "grounding":
        from medclip_core.eval.grounding_eval import evaluate_grounding
        from medclip_core.tasks.grounding import METHODS

        methods = args.methods or list(METHODS)
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise MedclipError(f"Unknown heatmap method(s) {unknown}; choose from {', '.join(METHODS)}.")
        result = evaluate_grounding(model, n=args.n, methods=methods, split=args.split, seed=args.seed,
                                    progress=progress)
    else:
        result = evaluate_phantom(model, n=args.n, split=args.split, seed=args.seed, progress=progress,
                                  negatives=args.negatives)
    payload = result.to_dict()
    out = args.out or _eval_path_next_to(args.model, f"eval_{args.task}.json")
    if out is not None:
        write_eval(result, out)
        payload["written_to"] = str(out)
    return payload


def _eval_report(args: argparse.Namespace) -> Any:
    from medclip_core.errors import ModelUnavailableError
    from medclip_core.eval.report_eval import evaluate_reports, write_report_eval
    from medclip_core.models import default_model_name, load_model
    from medclip_core.tasks.report import decoder_folder, decoder_for

    name = args.model or default_model_name()
    model = load_model(name, device=args.device)
    try:
        decoder = decoder_for(model, name)
    except ModelUnavailableError as error:  # retrieval and baselines still run
        print(f"note: {error}", file=sys.stderr)
        decoder = None
    result = evaluate_reports(model, decoder, split=args.split, n=args.n, seed=args.seed,
                              progress=lambda fraction, message: print(f"{fraction:.0%} {message}", file=sys.stderr))
    payload = result.to_dict()
    out = args.out
    if out is None and decoder is not None and args.split == "test" and result.complete_split:
        out = decoder_folder(name) / "eval_report.json"  # the whole test split's evaluation goes next to the decoder
    if out is not None:
        write_report_eval(result, out)
        payload["written_to"] = str(out)
    return payload


def cmd_report(args: argparse.Namespace) -> Any:
    from medclip_core.io import load_image
    from medclip_core.tasks.report import METHODS, SUPPORT, draft_report

    image = load_image(args.image, frame=args.frame)
    methods = METHODS if args.method == "both" else (args.method,)
    support = SUPPORT if args.support is None else args.support
    drafts = {m: draft_report(image, m, args.model, k=args.k, impression_k=args.impression_k, beam=args.beam,
                              support=support).to_dict() for m in methods}
    return drafts[args.method] if args.method != "both" else drafts


def _eval_path_next_to(model_name: str | None, file_name: str) -> Path | None:
    """Evaluations are written next to local models (checkpoint folders, the embedded default)."""
    from medclip_core.models import default_model_name, get_spec

    name = model_name or default_model_name()
    if name.startswith("local-dir:"):
        return Path(name[len("local-dir:"):]) / file_name
    try:
        spec = get_spec(name)
    except MedclipError:
        return None
    return spec.local_path / file_name if spec.backend == "checkpoint" else None


def cmd_zero_shot(args: argparse.Namespace) -> Any:
    from medclip_core.io import load_image
    from medclip_core.tasks.diagnose import diagnose
    from medclip_core.tasks.zero_shot import LABEL_PRESETS, parse_labels

    if args.labels:
        labels = parse_labels("\n".join(args.labels))
    else:
        labels = list(LABEL_PRESETS[args.preset])
    result = diagnose(load_image(args.image, frame=args.frame), labels, mode=args.mode, model=args.model,
                      compare_with=args.compare_with, shots=args.shots, support_csv=args.support_csv,
                      negatives=args.negatives)
    return result.to_dict()


def _phrases_from(args: argparse.Namespace) -> list[str]:
    from medclip_core.tasks.grounding import check_phrases

    return check_phrases(args.phrases or [])


def cmd_heatmap(args: argparse.Namespace) -> Any:
    from PIL import Image

    from medclip_core.io import load_image
    from medclip_core.tasks.grounding import ground

    result = ground(load_image(args.image, frame=args.frame), _phrases_from(args), model=args.model,
                    method=args.method)
    payload = result.to_dict()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        np_path = args.out / "heatmaps.npy"
        np_path.write_bytes(result.npy_bytes())
        payload["npy"] = str(np_path)
        payload["png"] = []
        for index, heatmap in enumerate(result.maps):
            path = args.out / f"heatmap-{index}.png"
            Image.fromarray((heatmap * 255).round().astype("uint8")).save(path)
            result.overlay(index, args.opacity).save(args.out / f"overlay-{index}.png")
            payload["png"].append(str(path))
    return payload


def cmd_segment(args: argparse.Namespace) -> Any:
    from medclip_core.io import load_image
    from medclip_core.tasks.segmentation import segment

    result = segment(load_image(args.image, frame=args.frame), _phrases_from(args), model=args.model,
                     method=args.method)
    payload = result.to_dict()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        payload["masks"] = []
        for index in range(len(result.phrases)):
            path = args.out / f"mask-{index}.png"
            path.write_bytes(result.mask_png(index))
            payload["masks"].append(str(path))
        if args.dicom_seg:
            from medclip_core.dicom_seg import write_dicom_seg

            path = write_dicom_seg(args.image, dict(zip(result.phrases, result.masks)), args.out / "segmentation.dcm")
            payload["dicom_seg"] = str(path)
    return payload


def _tqdm_progress(description: str):
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    return update


def _gallery_index(args: argparse.Namespace) -> Any:
    from medclip_core.models import load_model
    from medclip_core.tasks.retrieval import build_index, collection_from_spec

    collection = collection_from_spec(args.gallery)
    index = build_index(load_model(args.model), collection, progress=_tqdm_progress("embedding gallery"))
    return {**index.to_dict(), "skipped": [s.__dict__ for s in collection.skipped]}


def cmd_retrieve(args: argparse.Namespace) -> Any:
    from medclip_core.io import load_image
    from medclip_core.models import load_model
    from medclip_core.tasks.retrieval import (
        build_index, collection_from_spec, image_to_reports, labels_in_text, precision_at_k, search_image,
        search_text)

    if (args.text is None) == (args.image is None):
        raise MedclipError("Give exactly one query: --text TEXT or --image PATH.")
    if args.index:
        return _retrieve_from_archive_index(args)
    model = load_model(args.model)
    if args.reports:
        if args.image is None:
            raise MedclipError("--reports searches the report corpus with an image: give --image PATH.")
        return image_to_reports(model, load_image(args.image), k=args.k,
                                progress=_tqdm_progress("embedding reports")).to_dict()
    collection = collection_from_spec(args.gallery)
    index = build_index(model, collection, progress=_tqdm_progress("embedding gallery"))
    if args.text is not None:
        result = search_text(model, index, args.text, k=args.k)
    else:
        result = search_image(model, index, load_image(args.image), k=args.k)
    payload = result.to_dict()
    if collection.labelled and args.text is not None and labels_in_text(args.text):
        payload["precision_at_k"] = precision_at_k(result)
    return payload


def add_index_commands(sub: Any) -> None:
    """``index`` (the gallery cache, as before) and ``index build | list | info`` (archive indexes)."""
    p = sub.add_parser("index", help="build (or reuse) the image index of a gallery for a model; "
                                     "`index build` indexes an archive folder or CSV (see docs/scale.md)")
    p.add_argument("--model")
    p.add_argument("--gallery", default="phantom", help="phantom, phantom:N, a folder of images or a CSV")
    p.set_defaults(func=cmd_index)
    actions = p.add_subparsers(dest="index_action")
    build = actions.add_parser("build", help="embed every image of a folder or CSV into a resumable index folder")
    build.add_argument("--source", required=True, help="folder (recursive; PNG/JPEG/TIFF/DICOM) or CSV "
                                                       "(image[,report][,labels])")
    build.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
    build.add_argument("--out", type=Path, required=True, help="the index folder (resumes the job it holds)")
    build.add_argument("--engine", choices=("local", "ray"), default="local")
    build.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: a Ray instance on this machine)")
    build.add_argument("--workers", type=int, default=2, help="local: decode processes; ray: model replicas")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--shard-size", type=int, default=1024, help="images per shard (the most a crash loses)")
    build.add_argument("--exact-max", type=int, help="largest exact index; above it IVF-PQ (default 100000)")
    build.set_defaults(func=cmd_index)
    listing = actions.add_parser("list", help="the indexes registered under MEDCLIP_INDEX_ROOT")
    listing.set_defaults(func=cmd_index)
    info = actions.add_parser("info", help="what an index holds (index.json)")
    info.add_argument("name", help="a name under MEDCLIP_INDEX_ROOT, or an index folder")
    info.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> Any:
    action = getattr(args, "index_action", None)
    if action is None:
        return _gallery_index(args)
    from medclip_core.index import ArchiveIndex, BuildOptions, build_index, registered_indexes, resolve_index

    if action == "list":
        return registered_indexes()
    if action == "info":
        return ArchiveIndex.open(resolve_index(args.name)).info.to_dict()
    options = BuildOptions(engine=args.engine, address=args.address, workers=args.workers,
                           batch_size=args.batch_size, shard_size=args.shard_size,
                           **({"exact_max": args.exact_max} if args.exact_max is not None else {}))
    try:
        info = build_index(args.source, args.model, args.out, options)
    except KeyboardInterrupt:
        raise MedclipError(f"Interrupted; the finished shards are kept in {args.out}. Run the same command "
                           "again to resume.") from None
    return {**info.to_dict(), "path": str(args.out)}


def _retrieve_from_archive_index(args: argparse.Namespace) -> Any:
    from medclip_core.index import ArchiveIndex, resolve_index, search_index_image, search_index_text
    from medclip_core.io import load_image
    from medclip_core.models import load_model

    if args.reports:
        raise MedclipError("--reports searches the report corpus, not an archive index; leave out --index.")
    index = ArchiveIndex.open(resolve_index(args.index))
    model = load_model(args.model or index.info.model)
    if args.text is not None:
        return search_index_text(model, index, args.text, k=args.k).to_dict()
    return search_index_image(model, index, load_image(args.image), k=args.k).to_dict()


def cmd_embed(args: argparse.Namespace) -> Any:
    from medclip_core.models import load_model
    from medclip_core.tasks.embedding import embedding_map
    from medclip_core.tasks.retrieval import collection_from_spec

    result = embedding_map(load_model(args.model), collection_from_spec(args.gallery), method=args.method,
                           color_by=args.color_by, seed=args.seed, progress=_tqdm_progress("embedding"))
    return result.to_dict()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medclip_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list registry models, whether each loads here, and their cards")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("inspect", help="read an image (PNG/JPEG/TIFF/DICOM): safe metadata and a windowed preview")
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=Path, help="write the windowed preview PNG here")
    p.add_argument("--frame", type=int, help="frame of a multi-frame image (default: the middle one)")
    p.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"), help="override the DICOM window")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("phantom", help="render phantom chest radiographs with their reports, labels and boxes")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("zero-shot", help="zero-shot finding probabilities for one image (optionally few-shot adapted)")
    p.add_argument("image", type=Path)
    p.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
    p.add_argument("--labels", nargs="+", help="labels to score (default: the --preset label set)")
    p.add_argument("--preset", choices=("Phantom findings", "CheXpert findings"), default="Phantom findings")
    p.add_argument("--mode", choices=("pairwise", "softmax"), default="pairwise")
    p.add_argument("--negatives", choices=("negated", "normal"),
                   help="pairwise negative prompts: 'No {finding}.' (negated) or a normal study's sentences "
                        "(normal); default: the model's own (its card's zero_shot_negatives)")
    p.add_argument("--compare-with", help="a second model scored on the same image and labels")
    p.add_argument("--shots", type=int, default=0, help="phantom examples per label for Tip-Adapter / linear probe")
    p.add_argument("--support-csv", type=Path, help="few-shot support set: CSV with columns image,labels")
    p.add_argument("--frame", type=int)
    p.set_defaults(func=cmd_zero_shot)

    add_index_commands(sub)

    p = sub.add_parser("retrieve", help="text -> images, image -> images, or image -> reports (--reports)")
    p.add_argument("--model")
    p.add_argument("--gallery", default="phantom", help="phantom, phantom:N, a folder of images or a CSV")
    p.add_argument("--text")
    p.add_argument("--image", type=Path)
    p.add_argument("--reports", action="store_true", help="search the Open-i report corpus with --image")
    p.add_argument("--index", help="search an archive index (a name under MEDCLIP_INDEX_ROOT, or its folder) "
                                   "instead of --gallery; see `index build`")
    p.add_argument("--k", type=int, default=10)
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("embed", help="2-D map of a gallery's image and report embeddings, with the modality gap")
    p.add_argument("--model")
    p.add_argument("--gallery", default="phantom:200")
    p.add_argument("--method", choices=("umap", "pca", "tsne"), default="umap")
    p.add_argument("--color-by", choices=("label", "modality"), default="label")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("report", help="draft a report for an image: sentence retrieval or the trained decoder")
    p.add_argument("image", type=Path)
    p.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
    p.add_argument("--method", choices=("retrieval", "generative", "both"), default="retrieval")
    p.add_argument("--k", type=int, default=4, help="retrieval: findings sentences")
    p.add_argument("--impression-k", type=int, default=1, help="retrieval: impression sentences")
    p.add_argument("--support", type=float,
                   help="retrieval: calibrated zero-shot probability a stated abnormal finding needs "
                        "(default 0.1, best on the validation split; 0: no check)")
    p.add_argument("--beam", type=int, default=3, help="generative: beam width")
    p.add_argument("--frame", type=int)
    p.set_defaults(func=cmd_report)

    for name, func, default_method, methods_help in (
            ("heatmap", cmd_heatmap, "similarity", "similarity, surgery, gradcam, gscorecam, relevance"),
            ("segment", cmd_segment, "zero-shot:similarity", "zero-shot:<heatmap method> or trained")):
        p = sub.add_parser(name, help=f"one {name.replace('segment', 'mask')} per phrase for an image")
        p.add_argument("image", type=Path)
        p.add_argument("phrases", nargs="+", help="one or more phrases, e.g. 'left pleural effusion'")
        p.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
        p.add_argument("--method", default=default_method, help=methods_help)
        p.add_argument("--frame", type=int)
        p.add_argument("--out", type=Path, help="folder for the PNG / .npy outputs")
        p.set_defaults(func=func)
    p.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG (DICOM input only)")
    p_heatmap = sub.choices["heatmap"]
    p_heatmap.add_argument("--opacity", type=float, default=0.5, help="overlay opacity of overlay-N.png")

    p = sub.add_parser("train", help="training runs (resume when --out holds a run)")
    p.add_argument("--task", choices=(*TRAIN_TASKS, "report"), default="contrastive",
                   help="; ".join(f"{name}: {text}" for name, text in TRAIN_TASKS.items())
                   + "; report: the report decoder over a frozen --model (phantom only; not offered to the run manager)")
    p.add_argument("--model", help="segmentation, report: the frozen model (default medclip-phantom)")
    p.add_argument("--feature-dir", help="report: where the frozen image features are cached (default OUT/features)")
    p.add_argument("--preset", choices=("phantom",), help="phantom: the embedded default's architecture and data")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics.jsonl, config")
    p.add_argument("--architecture", help="architecture JSON name in train/architectures, or local-dir:CHECKPOINT")
    p.add_argument("--data", help="'phantom' or a CSV with columns image,report[,labels]")
    for name, kind in (("epochs", float), ("max-steps", int), ("batch-size", int), ("lr", float),
                       ("weight-decay", float), ("warmup-steps", int), ("seed", int), ("phantom-variants", int),
                       ("limit-reports", int), ("local-loss-weight", float), ("checkpoint-every", int),
                       ("log-every", int), ("val-reports", int), ("lora-rank", int), ("render-workers", int),
                       # segmentation
                       ("variants", int), ("focal-extra-variants", int), ("phrases-per-image", int),
                       ("dice-weight", float), ("nonfocal-fraction", float)):
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--precision", choices=("bf16", "fp32"))
    p.add_argument("--lock", choices=("none", "image", "image-all", "text"),
                   help="freeze a tower: image = LiT (a CNN keeps its projection head), image-all = every "
                        "image-tower weight (the text tower trains alone), text = the text tower")
    p.add_argument("--no-semantic-matching", dest="semantic_matching", action="store_false", default=None)
    p.add_argument("--device")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", help="background training runs: list, start NAME, cancel NAME, validate CSV")
    p.add_argument("action", choices=("list", "start", "cancel", "validate"))
    p.add_argument("target", nargs="?", help="run name (start, cancel) or dataset CSV (validate)")
    p.add_argument("--base-model", dest="base_model", help="checkpoint model or architecture (default medclip-phantom)")
    p.add_argument("--data", help="phantom, phantom:N or a CSV path")
    p.add_argument("--task", choices=tuple(TRAIN_TASKS))
    p.add_argument("--method", choices=tuple(METHODS))
    for name, kind in (("epochs", float), ("max-steps", int), ("batch-size", int), ("lr", float), ("seed", int),
                       ("nproc", int), ("checkpoint-every", int)):
        p.add_argument(f"--{name}", dest=name.replace("-", "_"), type=kind)
    p.add_argument("--device")
    p.add_argument("--wait", type=float, default=10.0, help="cancel: seconds to wait for the process to end")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("eval", help="phantom test split: zero-shot AUC, retrieval, pointing (--task phantom); "
                                    "heatmap methods and zero-shot masks (--task grounding); report drafts "
                                    "against baselines (--task report)")
    p.add_argument("--task", choices=("phantom", "grounding", "report"), default="phantom")
    p.add_argument("--methods", nargs="+", help="heatmap methods for --task grounding (default: all)")
    p.add_argument("--negatives", choices=("negated", "normal"),
                   help="--task phantom: pairwise negative prompts (default: the model's own)")
    p.add_argument("--model", help="registry name or local-dir:PATH (default: the default model)")
    p.add_argument("--data", default="phantom")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--out", type=Path, help="where to write the JSON (default: next to a local model)")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except MedclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # last resort: one line, not a traceback, unless debugging
        if os.environ.get("MEDCLIP_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set MEDCLIP_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_INTERNAL
    if result is not None:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
